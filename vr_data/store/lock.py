"""One builder per store: `flock` on a local disk, a renewed lease object in a bucket.

Object storage has no `flock` and no rename, so the lock on `s3://...` is the object
`.build/lock`, created with a conditional PUT (`If-None-Match: *`: of two racing builders exactly
one succeeds). Its holder rewrites it every third of the lease (`VR_STORE_LOCK_LEASE`, default
60 s) with `If-Match` on the ETag it last wrote, and deletes it when done. A builder that finds
the lock refuses at once, unless the lock was last written more than a lease ago by the
server's own clock (`Last-Modified` against the response's `Date`, so machines' clocks do not
matter): its holder died (SIGKILL, a lost node), and the newcomer takes it over with `If-Match`
on the stale ETag, so of two newcomers one wins. Before the store is marked complete the holder
renews once more and stops if that fails (another builder took over after a pause longer than a
lease), so a stalled builder never commits a store someone else is writing.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from vr_data.errors import VRDataError
from vr_data.io import UNWRITABLE, exclusive_lock
from vr_data.store import remote
from vr_data.store.remote import Location, ObjectPath


def lease_seconds() -> float:
    """The remote lock's lease from `VR_STORE_LOCK_LEASE` (seconds, default 60)."""
    try:
        value = float(os.environ.get("VR_STORE_LOCK_LEASE", "60"))
    except ValueError:
        raise VRDataError(None, "VR_STORE_LOCK_LEASE must be a number of seconds") from None
    if value <= 0:
        raise VRDataError(None, "VR_STORE_LOCK_LEASE must be positive")
    return value


class Lease:
    """The remote lock held by this process (see the module docstring)."""

    def __init__(self, path: ObjectPath, holder: str, subject: Location, seconds: float):
        self.path, self.holder, self.subject, self.seconds = path, holder, subject, seconds
        self.body = json.dumps({"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
                                "token": uuid.uuid4().hex, "lease_seconds": seconds}, sort_keys=True).encode()
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        if remote.create_new(self.path, self.body):
            self.etag = self._head()[0]
        else:
            etag, age, owner = self._head()
            if etag is None:  # released between our PUT and HEAD: try once more
                if not remote.create_new(self.path, self.body):
                    raise self._in_use("another builder", 0.0)
                self.etag = self._head()[0]
            elif age <= self.seconds:
                raise self._in_use(owner, age)
            elif not self._put(if_match=etag):
                raise self._in_use("another builder (it took over a stale lock first)", 0.0)
        self._thread = threading.Thread(target=self._renew_loop, name="store-lock-lease", daemon=True)
        self._thread.start()

    def confirm(self) -> None:
        """Renew now; a VRDataError if the lock is no longer ours."""
        if self.lost or not self._put(if_match=self.etag):
            self.lost = True
            raise VRDataError(self.subject, "lost the build lock (this builder paused longer than the lease "
                                            "and another took over); the store is left to that builder",
                              UNWRITABLE)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            etag = self._head()[0]
            if etag == self.etag:
                remote.delete(self.path)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self._put(if_match=self.etag):
                    self.lost = True
                    return
            except VRDataError:
                continue  # endpoint away for a moment: the next renewal may pass, confirm() decides

    def _put(self, if_match: str | None) -> bool:
        """Rewrite the lock if its ETag is `if_match`; False if it is not."""
        fs = remote.client()
        try:
            response = remote.call(self.path, lambda: fs.call_s3(
                "put_object", Bucket=self.path.bucket, Key=self.path.key, Body=self.body, IfMatch=if_match),
                writing=True)
        except FileExistsError:  # 412: the ETag changed
            return False
        except VRDataError as error:
            if "object not found" in error.reason:  # deleted under us
                return False
            raise
        self.etag = response["ETag"]
        return True

    def _head(self) -> tuple[str | None, float, str]:
        """(ETag or None, seconds since last written by the server's clock, holder text)."""
        fs = remote.client()
        response = remote.call(self.path, lambda: fs.call_s3("head_object", Bucket=self.path.bucket,
                                                              Key=self.path.key), missing_ok=True)
        if response is None:
            return None, 0.0, ""
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
        age = (now - response["LastModified"]).total_seconds()
        owner = "another builder"
        with contextlib.suppress(VRDataError, FileNotFoundError, ValueError, KeyError):
            record = json.loads(remote.read_bytes(self.path))
            owner = f"PID {record['pid']} on {record['host']}"
        return response["ETag"], age, owner

    def _in_use(self, owner: str, age: float) -> VRDataError:
        return VRDataError(self.subject, f"in use by {owner} ({self.holder}; its lock was renewed {age:.0f} s ago, "
                                         f"a dead builder's lock expires {self.seconds:g} s after); wait for it "
                                         "to finish", UNWRITABLE)


@contextlib.contextmanager
def build_lock(path: Location, holder: str, subject: Location) -> Iterator[Lease | None]:
    """Hold the store's build lock at `path` for the `with` block; yields the `Lease` (remote) or
    None (local, `flock`)."""
    if isinstance(path, Path):
        with exclusive_lock(path, holder, subject=subject):
            yield None
        return
    lease = Lease(path, holder, subject, lease_seconds())
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


__all__ = ["Lease", "build_lock", "lease_seconds"]
