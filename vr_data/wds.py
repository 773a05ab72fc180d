"""WebDataset tar shards of fixed-length spectrogram segments: writing and safe reading.

A sample is one segment of `segment_frames` frames of one track, key `{track_id}_{segment:05d}`
(no dots: WebDataset splits a member name at the first dot into key and extension). Members:
`{key}.{source}.npy` per source (`mixture`/`instrumental` for pairs, `vocal`, `instrumental`,
`audio` for pretraining), float16 `(segment_frames, 2, 2, bins)` as stored in Zarr, and
`{key}.json` (track, role, split, segment, start_frame, frames = valid frames; the last
segment of a track is zero-padded). Tar headers are fixed (mtime 0, uid/gid 0, no names), so
the same samples always give the same bytes and a resumed build writes identical tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vr_data.errors import VRDataError
from vr_data.store_format import WdsShard

_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_EXTENSIONS = {"json"} | {f"{source}.npy" for source in ("mixture", "instrumental", "vocal", "audio")}


def sample_key(track_id: str, segment: int) -> str:
    return f"{track_id}_{segment:05d}"


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy serialisation (format 1.0 header, deterministic) of a plain numeric array."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


class TrackTarWriter:
    """Writes one track's samples to `{directory}/{stem}-{part:04d}.tar`, a new part beyond
    `target_bytes`. Each part is written under a temporary name and renamed when closed, so a
    killed build never leaves a truncated tar under a final name.
    """

    def __init__(self, directory: Path, stem: str, role: str, track_id: str, target_bytes: int, relative_to: Path):
        self.directory = Path(directory)
        self.stem = stem
        self.role = role
        self.track_id = track_id
        self.target_bytes = target_bytes
        self.relative_to = Path(relative_to)
        self.shards: list[WdsShard] = []
        self._part = -1
        self._tar = None

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: `members` maps extension (`json`, `mixture.npy`...) to bytes."""
        size = sum(512 + -(-len(data) // 512) * 512 for data in members.values())
        if self._tar is None or (self._samples > 0 and self._hasher.size + size > self.target_bytes):
            self._next_part()
        for extension, data in members.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._samples += 1

    def close(self) -> list[WdsShard]:
        """Finish the last part; returns every part written, in order."""
        self._finish_part()
        return self.shards

    def _next_part(self) -> None:
        self._finish_part()
        self._part += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self._final = self.directory / f"{self.stem}-{self._part:04d}.tar"
        self._temporary = self.directory / f".{self._final.name}.tmp-{os.getpid()}"
        self._handle = open(self._temporary, "wb")
        self._hasher = _HashingFile(self._handle)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w", format=tarfile.PAX_FORMAT)
        self._samples = 0

    def _finish_part(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._temporary, self._final)
        self.shards.append(WdsShard(
            path=self._final.relative_to(self.relative_to).as_posix(), role=self.role, track=self.track_id,
            samples=self._samples, bytes=self._hasher.size, sha256=self._hasher.digest.hexdigest(),
        ))
        self._tar = None


def iter_tar_samples(path: Path) -> Iterator[dict]:
    """Samples of one tar in order: `{"__key__", "json": dict, source: float16 array...}`.

    Refuses (VRDataError naming the tar) members that are not plain files, names with a
    directory part, absolute or `..` paths, unknown extensions, and unreadable arrays; arrays
    are loaded with `allow_pickle=False`.
    """
    path = Path(path)
    current: dict | None = None
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                key, extension = _check_member(path, member)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                data = archive.extractfile(member).read()
                if extension == "json":
                    current["json"] = json.loads(data)
                else:
                    current[extension[: -len(".npy")]] = np.load(io.BytesIO(data), allow_pickle=False)
    except (tarfile.TarError, OSError, ValueError, EOFError) as error:
        raise VRDataError(path, f"damaged WebDataset shard ({str(error).splitlines()[0][:160] if str(error) else type(error).__name__})") from None
    if current is not None:
        yield current


def _check_member(path: Path, member: tarfile.TarInfo) -> tuple[str, str]:
    name = member.name
    if not member.isfile():
        raise VRDataError(path, f"member {name!r} is not a regular file")
    if name.startswith("/") or "/" in name or "\\" in name or ".." in name:
        raise VRDataError(path, f"member {name!r} has a path (absolute, directory or '..'); refused")
    key, _, extension = name.partition(".")
    if not _KEY.match(key) or extension not in _EXTENSIONS:
        raise VRDataError(path, f"member {name!r} is not a store sample member")
    return key, extension
