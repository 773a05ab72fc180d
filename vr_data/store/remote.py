"""Store locations on a local disk or in S3-compatible object storage (`s3://bucket/prefix`).

A location is a `Path` or an `ObjectPath`; both join with `/` and have `name` and `parent`, and
the functions here (`exists`, `read_bytes`, `read_range`, `write_bytes`, `create_new`, `upload`,
`list_sizes`, `kvstore`...) take either, so a store's writers and readers have one code path.
Local writes go through `vr_data.io` (temporary name, fsync, rename); an object PUT is atomic by
itself: the object appears whole or not at all, so no rename is needed.

Client: s3fs (fsspec) over botocore for objects, tensorstore's `s3` kvstore driver for the Zarr
arrays. Credentials, endpoint and region come from the environment as botocore and tensorstore
read them (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`,
`AWS_REGION`); nothing here takes or prints a secret. Why s3fs: it is the fsspec S3 backend that
dask already depends on, it reads the whole botocore credential chain (profiles, SSO, instance
roles), exposes conditional writes (`mode="create"` = `If-None-Match: *`) and byte ranges, and is
plain Python, so it behaves in forked loader workers (one client per process).

Errors: every call is retried with exponential backoff on a transient cause (throttling, 5xx,
a dropped connection), and each retry is counted (`retry_count`, shown in the mixer's stats).
What remains becomes one `VRDataError` naming the URL and the cause: endpoint unreachable, no
credentials, no such bucket, access denied, throttled.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar, Union

from vr_data.errors import MISSING, UNAVAILABLE, VRDataError
from vr_data.io import UNWRITABLE, atomic_write_bytes

SCHEME = "s3://"
MAX_ATTEMPTS = 6            # first try plus five retries
BACKOFF_SECONDS = 0.2       # first wait; doubles each retry (0.2, 0.4 ... 3.2 s: about 6 s in all)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "RequestThrottled", "ProvisionedThroughputExceededException"}
_SERVER_BUSY = {"InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed", "503", "500"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken",
           "InvalidToken", "AccountProblem", "403"}

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectPath:
    """An object (or a prefix) `s3://bucket/key`; `key` has no leading or trailing slash."""

    bucket: str
    key: str = ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def __truediv__(self, part: str | PurePosixPath) -> ObjectPath:
        part = "/".join(segment for segment in str(part).split("/") if segment)
        if any(segment in (".", "..") for segment in part.split("/")):
            raise VRDataError(self, f"{str(part)!r} leads outside the store's prefix")
        return ObjectPath(self.bucket, f"{self.key}/{part}" if self.key else part) if part else self

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, self.key.rpartition("/")[0])

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        prefix = f"{other.key}/" if other.key else ""
        if other.bucket != self.bucket or not self.key.startswith(prefix):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key[len(prefix):])

    def as_posix(self) -> str:
        return str(self)

    @property
    def fs_path(self) -> str:
        """`bucket/key`, as s3fs names it."""
        return f"{self.bucket}/{self.key}"


Location = Union[Path, ObjectPath]


def is_remote(value: object) -> bool:
    return isinstance(value, ObjectPath) or (isinstance(value, str) and value.startswith(SCHEME))


def location(value: str | Path | ObjectPath) -> Location:
    """`s3://bucket/prefix` as an `ObjectPath`, anything else as a `Path`.

    A URL with `..` or `.` segments, a query or an invalid bucket name is refused: a store's keys
    are always below its prefix.
    """
    if isinstance(value, (ObjectPath, Path)):
        return value
    text = str(value)
    if not text.startswith(SCHEME):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
            raise VRDataError(text, "unsupported URL scheme (a store is a local path or s3://bucket/prefix)")
        return Path(text)
    bucket, _, key = text[len(SCHEME):].partition("/")
    parts = [part for part in key.split("/") if part]
    if not _BUCKET.match(bucket):
        raise VRDataError(text, f"{bucket!r} is not a valid bucket name")
    if any(part in (".", "..") for part in parts) or "?" in key or "#" in key:
        raise VRDataError(text, "the key prefix has '.'/'..' segments, a query or a fragment; give s3://bucket/prefix")
    return ObjectPath(bucket, "/".join(parts))


# ---------------------------------------------------------------------------- the client


_client_lock = threading.Lock()
_client: dict = {"key": None, "fs": None}
_retries = {"count": 0}
_fetched = {"bytes": 0}


def retry_count() -> int:
    """Requests retried after a transient error in this process so far: ours (s3fs) plus
    tensorstore's S3 retries (its `/tensorstore/kvstore/s3/retries` counter)."""
    return _retries["count"] + _tensorstore_counter("/tensorstore/kvstore/s3/retries")


def _tensorstore_counter(name: str) -> int:
    import tensorstore as ts

    return int(sum(value.get("value", 0) for metric in ts.experimental_collect_matching_metrics(name)
                   for value in metric.get("values", [])))


def endpoint_url() -> str | None:
    """The S3 endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def client():
    """This process's s3fs filesystem: a forked worker makes its own, and so does a change of
    the environment it was made from (endpoint, region, key id, profile)."""
    key = (os.getpid(), endpoint_url(), region(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    with _client_lock:
        if _client["key"] != key:
            import s3fs

            client_kwargs = {}
            if region():
                client_kwargs["region_name"] = region()
            fs = s3fs.S3FileSystem(
                skip_instance_cache=True, endpoint_url=endpoint_url(), client_kwargs=client_kwargs,
                config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 60},
                use_listings_cache=False,
            )
            fs.retries = 1  # our loop retries (and counts) instead
            _client.update(key=key, fs=fs)
        return _client["fs"]


def _error_code(error: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError behind `error` (s3fs chains it as the cause)."""
    for candidate in (error, error.__cause__, error.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(code or status or "") or None
    return None


def classify(error: BaseException) -> tuple[str, str]:
    """(kind, cause) of a failed request: kind is `transient` (worth a retry), `missing`
    (no such key: the caller decides), `exists` (a conditional write lost) or `fatal`."""
    code = _error_code(error)
    name = type(error).__name__
    text = str(error).splitlines()[0][:160] if str(error) else name
    if code == "NoSuchBucket" or "bucket does not exist" in text.lower():
        return "fatal", "the bucket does not exist"
    if code in _THROTTLED or "reduce your request rate" in text:
        return "transient", f"throttled by the server ({code or 'SlowDown'})"
    if code in _SERVER_BUSY:
        return "transient", f"server error ({code})"
    if code in _DENIED or isinstance(error, PermissionError):
        return "fatal", f"access denied ({code or text})"
    if isinstance(error, FileExistsError) or code == "PreconditionFailed":
        return "exists", "already exists"
    if isinstance(error, FileNotFoundError) or code in ("NoSuchKey", "404"):
        return "missing", "no such object"
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - s3fs depends on botocore
        boto = None
    if boto is not None:
        if isinstance(error, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return "fatal", ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(error, boto.ProfileNotFound):
            return "fatal", "the AWS_PROFILE named in the environment does not exist"
        if isinstance(error, (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError,
                              boto.ConnectionClosedError)):
            return "transient", f"cannot reach the endpoint {endpoint_url() or 'of AWS S3'}"
    if isinstance(error, (ConnectionError, TimeoutError)) or "connect" in text.lower():
        return "transient", f"cannot reach the endpoint {endpoint_url() or 'of AWS S3'}"
    return "fatal", text


def call(target: ObjectPath, request: Callable[[], T], *, missing_ok: bool = False, writing: bool = False) -> T | None:
    """Run one request with retries on transient errors; returns None for a missing object when
    `missing_ok`, raises FileExistsError for a lost conditional write, else VRDataError."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            return request()
        except Exception as error:  # noqa: BLE001 - classified below; bugs re-raise
            if isinstance(error, (TypeError, AttributeError, AssertionError)):
                raise
            kind, cause = classify(error)
            if kind == "transient" and attempt + 1 < MAX_ATTEMPTS:
                _retries["count"] += 1
                time.sleep(BACKOFF_SECONDS * 2**attempt)
                continue
            if kind == "missing" and missing_ok:
                return None
            if kind == "exists":
                raise FileExistsError(str(target)) from None
            if kind == "missing":
                raise VRDataError(target, "object not found", MISSING) from None
            if kind == "transient":
                cause = f"{cause}, after {MAX_ATTEMPTS} tries"
            raise VRDataError(target, cause, UNWRITABLE if writing else UNAVAILABLE) from None
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- reads


def exists(path: Location) -> bool:
    """A file or directory (local), an object or a non-empty prefix (remote)."""
    if isinstance(path, Path):
        return path.exists()
    return is_file(path) or bool(call(path, lambda: client().ls(path.fs_path + "/", detail=False), missing_ok=True))


def is_file(path: Location) -> bool:
    return size(path) is not None


def size(path: Location) -> int | None:
    """Bytes of the file or object, None if there is none."""
    if isinstance(path, Path):
        return path.stat().st_size if path.is_file() else None
    info = call(path, lambda: client().info(path.fs_path, refresh=True), missing_ok=True)
    if info is None or info.get("type") != "file":
        return None
    return int(info["size"])


def read_bytes(path: Location) -> bytes:
    """The whole file or object; a missing one raises FileNotFoundError (as `Path.read_bytes`)."""
    if isinstance(path, Path):
        return path.read_bytes()
    data = call(path, lambda: client().cat_file(path.fs_path), missing_ok=True)
    if data is None:
        raise FileNotFoundError(str(path))
    _fetched["bytes"] += len(data)
    return data


def read_text(path: Location) -> str:
    return read_bytes(path).decode("utf-8")


def read_range(path: Location, start: int, stop: int) -> bytes:
    """Bytes `[start, stop)` of a file or object: one ranged GET remotely."""
    if isinstance(path, Path):
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(stop - start)
    data = call(path, lambda: client().cat_file(path.fs_path, start=start, end=stop), missing_ok=True)
    if data is None:
        raise FileNotFoundError(str(path))
    _fetched["bytes"] += len(data)
    return data


def list_sizes(prefix: Location) -> dict[str, int]:
    """Every file or object below `prefix`: relative POSIX path -> bytes."""
    if isinstance(prefix, Path):
        if not prefix.is_dir():
            return {}
        return {p.relative_to(prefix).as_posix(): p.stat().st_size for p in prefix.rglob("*") if p.is_file()}
    found = call(prefix, lambda: client().find(prefix.fs_path + "/", detail=True), missing_ok=True) or {}
    root = prefix.fs_path + "/"
    return {name[len(root):]: int(info["size"]) for name, info in found.items()
            if name.startswith(root) and info.get("type") == "file"}


# ---------------------------------------------------------------------------- writes


def write_bytes(path: Location, data: bytes) -> None:
    """Write a whole file atomically (local: temporary + rename; remote: one PUT)."""
    if isinstance(path, Path):
        atomic_write_bytes(path, data)
        return
    call(path, lambda: client().pipe_file(path.fs_path, data), writing=True)


def write_json(path: Location, record: dict) -> None:
    write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def write_lines(path: Location, records: list[dict]) -> None:
    """JSONL: one compact sorted-key JSON object per line."""
    write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def create_new(path: ObjectPath, data: bytes) -> bool:
    """PUT with `If-None-Match: *`: True if this call created the object, False if it existed."""
    try:
        call(path, lambda: client().pipe_file(path.fs_path, data, mode="create"), writing=True)
    except FileExistsError:
        return False
    return True


def upload(local: Path, path: ObjectPath) -> None:
    """A finished local file to the object `path` (multipart beyond 50 MB; the object appears
    only when the upload completes)."""
    call(path, lambda: client().put_file(str(local), path.fs_path), writing=True)


def delete(path: Location) -> None:
    """Remove a file or object if it is there."""
    if isinstance(path, Path):
        path.unlink(missing_ok=True)
        return
    call(path, lambda: client().rm_file(path.fs_path), missing_ok=True, writing=True)


# ---------------------------------------------------------------------------- tensorstore


def kvstore(path: Location) -> dict:
    """The tensorstore kvstore spec of a directory or prefix."""
    if isinstance(path, Path):
        return {"driver": "file", "path": str(path.resolve())}
    spec = {"driver": "s3", "bucket": path.bucket, "path": f"{path.key}/" if path.key else ""}
    if endpoint_url():
        spec["endpoint"] = endpoint_url()
    if region() or endpoint_url():
        spec["aws_region"] = region() or "us-east-1"
    # Where the keys come from, as botocore decides: named, so the AWS SDK inside tensorstore
    # does not probe (and log about) absent ~/.aws files.
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        spec["aws_credentials"] = {"type": "environment"}
    elif os.environ.get("AWS_PROFILE"):
        spec["aws_credentials"] = {"type": "profile", "profile": os.environ["AWS_PROFILE"]}
    return spec


def bytes_fetched() -> int:
    """Bytes this process has read from object storage: tensorstore's S3 reads (the Zarr
    arrays) plus ranged GETs made here (tars, side files)."""
    return _tensorstore_counter("/tensorstore/kvstore/s3/bytes_read") + _fetched["bytes"]


def s3_context_spec() -> dict:
    """Context resources for tensorstore's S3 requests: retries with backoff."""
    return {"s3_request_retries": {"max_retries": MAX_ATTEMPTS - 1, "initial_delay": f"{BACKOFF_SECONDS}s",
                                   "max_delay": "5s"}}


__all__ = ["Location", "ObjectPath", "call", "classify", "create_new", "delete", "endpoint_url", "exists",
           "is_file", "is_remote", "kvstore", "list_sizes", "location", "read_bytes", "read_range", "read_text",
           "retry_count", "s3_context_spec", "size", "upload", "write_bytes", "write_json", "write_lines"]


class RangeFile:
    """A read-only, seekable file over an object: reads of `block_bytes` ranged GETs, each
    retried like any request, so `tarfile` can read a remote tar front to back (or seek to a
    member) without downloading it first. Holds one block in memory."""

    def __init__(self, path: ObjectPath, block_bytes: int = 8 * 2**20):
        self.path, self.block_bytes = path, block_bytes
        found = size(path)
        if found is None:
            raise FileNotFoundError(str(path))
        self.length = found
        self.position = 0
        self.fetched = 0                    # bytes transferred so far
        self._block_start, self._block = 0, b""

    def read(self, count: int = -1) -> bytes:
        stop = self.length if count is None or count < 0 else min(self.length, self.position + count)
        pieces = []
        while self.position < stop:
            offset = self.position - self._block_start
            if not 0 <= offset < len(self._block):
                self._block_start = self.position
                self._block = read_range(self.path, self.position, min(self.length, self.position + self.block_bytes))
                self.fetched += len(self._block)
                offset = 0
            piece = self._block[offset:offset + stop - self.position]
            pieces.append(piece)
            self.position += len(piece)
        return b"".join(pieces)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._block = b""


def sha256(path: Location, block_bytes: int = 8 * 2**20) -> str:
    """sha256 of a whole file or object, read in blocks (ranged GETs remotely)."""
    import hashlib

    digest = hashlib.sha256()
    handle = open(path, "rb") if isinstance(path, Path) else RangeFile(path, block_bytes)
    try:
        while block := handle.read(block_bytes):
            digest.update(block)
    finally:
        handle.close()
    return digest.hexdigest()
