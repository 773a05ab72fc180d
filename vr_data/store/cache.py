"""A local disk cache of a remote store's Zarr shards, bounded in bytes, evicted least recently used.

Without it every read of a bucket store is a ranged GET of the inner chunks it needs. With it
(`open_store(..., cache_dir=, cache_gb=)`, or `VR_CACHE_DIR` / `VR_CACHE_GB`, or
`vrtrain run --cache-dir --cache-gb`) the first read of a shard downloads the whole shard object
into `CACHE_DIR/<store id>/zarr/<array>/c/...` (the local store's layout) and every later read,
a second epoch's included, reads the local file. Eviction: when the cached shards exceed the
bound, the least recently used ones (by the access time this module stamps on each use, so a
`noatime` mount does not matter) are deleted until they fit. Loader workers share the cache:
readers hold a shared `flock` on each shard file while tensorstore reads it, and the evictor
deletes only files it can lock exclusively, so a shard in use is never deleted under a reader
(a deleted shard would read as zeros, the fill value). Files are written under a temporary name
and renamed, so a killed download leaves no partial shard. A shard's crc32c chunk checksums are
checked on every read, from the cache as from the bucket.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from vr_data.errors import VRDataError
from vr_data.io import atomic_write_bytes
from vr_data.store import remote
from vr_data.store.format import ZARR_DIR


class ShardCache:
    """Whole shard objects of the store at `store` under `directory`, at most `limit_bytes`."""

    def __init__(self, store: remote.ObjectPath, directory: str | Path, limit_bytes: int):
        if limit_bytes <= 0:
            raise VRDataError(directory, "the cache size must be above 0 GB")
        self.store = store
        self.root = Path(directory) / hashlib.sha256(str(store).encode()).hexdigest()[:16]
        self.limit_bytes = int(limit_bytes)

    def array_dir(self, name: str) -> Path:
        """The local directory of array `name`, its `zarr.json` fetched on first use."""
        local = self.root / ZARR_DIR / name
        if not (local / "zarr.json").is_file():
            atomic_write_bytes(local / "zarr.json", remote.read_bytes(self.store / ZARR_DIR / name / "zarr.json"))
        return local

    @contextlib.contextmanager
    def pinned(self, shards: Sequence[tuple[str, int]], describe=None) -> Iterator[None]:
        """Hold shards `(array name, shard index)` on local disk for the `with` block (downloaded
        if absent; not evicted while held). `describe(name, index)` words a missing shard."""
        descriptors = []
        try:
            for name, index in dict.fromkeys(shards):
                descriptors.append(self._pin(name, index, describe))
            yield
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def _path(self, name: str, index: int) -> Path:
        return self.root / ZARR_DIR / name / "c" / str(index) / "0" / "0" / "0"

    def _pin(self, name: str, index: int, describe) -> int:
        path = self._path(name, index)
        while True:
            if not path.is_file():
                self._fetch(name, index, path, describe)
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted between the download and the open: fetch again
            fcntl.flock(descriptor, fcntl.LOCK_SH)
            try:
                same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.utime(path)  # the access time that orders eviction
                return descriptor
            os.close(descriptor)

    def _fetch(self, name: str, index: int, path: Path, describe) -> None:
        source = self.store / ZARR_DIR / name / "c" / str(index) / "0" / "0" / "0"
        try:
            data = remote.read_bytes(source)
        except FileNotFoundError:
            where = describe(name, index) if describe is not None else f"array {name}"
            raise VRDataError(source, f"Zarr shard missing in {where}; the store is damaged: run vrdata verify") from None
        atomic_write_bytes(path, data)
        self.evict()

    def evict(self) -> int:
        """Delete least recently used shards until the cache fits its bound; returns bytes freed."""
        files = []
        for path in self.root.glob(f"{ZARR_DIR}/*/c/*/0/0/0"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_atime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        freed = 0
        for _, size, path in sorted(files):
            if total <= self.limit_bytes:
                break
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue  # being read: keep it
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(descriptor)
            total -= size
            freed += size
        return freed


def cache_from_environment(store: remote.Location, cache_dir: str | Path | None = None,
                           cache_gb: float | None = None) -> ShardCache | None:
    """The shard cache of a remote store: `cache_dir`/`cache_gb`, else `VR_CACHE_DIR`/`VR_CACHE_GB`
    (default 50 GB); None for a local store or without a directory."""
    if not isinstance(store, remote.ObjectPath):
        return None
    directory = cache_dir or os.environ.get("VR_CACHE_DIR") or None
    if directory is None:
        return None
    if cache_gb is None:
        try:
            cache_gb = float(os.environ.get("VR_CACHE_GB", "50"))
        except ValueError:
            raise VRDataError(None, "VR_CACHE_GB must be a number of gigabytes") from None
    return ShardCache(store, directory, int(cache_gb * 1e9))


__all__ = ["ShardCache", "cache_from_environment"]
