"""Reading a spectrogram store built by `vrdata build-shards` (layout: docs/store.md).

`open_store(path)` refuses an incomplete store (a build still running, killed or appending) and
returns a `Store`: its STFT config and codec, its tracks (`TrackRecord`, from tracks.jsonl), and
random access to any track's frames. Reads go through tensorstore (several times faster than
zarr-python per crop); each process opens each array once and reuses it, with a shared chunk
cache, and `read_many` keeps many crops in flight at once. `iter_wds_samples` streams the
WebDataset shards of a role, validating every member.

Integrity: a read that meets a damaged Zarr chunk (its crc32c), a damaged shard index or a
missing shard file raises `VRDataError` naming the shard file and the track; so does a tar
member whose bytes differ from the checksum in its header. Stores built before these checksums
open with a `StoreIntegrityWarning` and are read without them.

Shapes: stored frames are float16 `(frames, channels=2, re/im=2, bins)`; spectrograms are
complex64 `(channels=2, bins, frames)` as `vr_data.dsp.stft.stft` returns them.
"""

from __future__ import annotations

import hashlib
import json
import contextlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorstore as ts

from vr_data.store.codec import CodecConfig, decode
from vr_data.errors import VRDataError
from vr_data.dsp.stft import StftConfig
from vr_data.store import remote
from vr_data.store.cache import ShardCache, cache_from_environment
from vr_data.store.arrays import ArrayIntegrity, array_integrity, default_context, open_array, shard_key
from vr_data.store.format import (
    REJECTS_JSONL, STORE_JSON, TRACKS_JSONL, WDS_DIR, WDS_INDEX, ZARR_DIR, BuildReject, StoreMeta, TrackRecord,
    WdsShard, read_json, read_store_meta,
)
from vr_data.store.plan import Geometry
from vr_data.store.wds import iter_tar_samples, wds_member_path

DEFAULT_CACHE_BYTES = 64 * 2**20

# A frame range of a track's source: (track or track id, source, start frame, stop frame).
FrameRequest = tuple["TrackRecord | str", str, int, int]


class StoreIntegrityWarning(UserWarning):
    """A store built before chunk and member checksums: readable, but damage may go unnoticed."""


class _Region:
    """Frames `[first, last)` of array `name` (absolute frame indexes) for `track`."""

    __slots__ = ("array", "first", "last", "name", "track")

    def __init__(self, array, first: int, last: int, name: str, track: TrackRecord):
        self.array, self.first, self.last, self.name, self.track = array, first, last, name, track

    def describe(self) -> str:
        """`track ID (array NAME, frames a:b)`, frames counted from the track's start."""
        start = self.track.zarr_start
        return f"track {self.track.id} (array {self.name}, frames {self.first - start}:{self.last - start})"


class Store:
    """A complete store opened for reading; cheap to pickle (arrays reopen in each process)."""

    def __init__(self, path: Path | remote.ObjectPath, meta: StoreMeta, tracks: list[TrackRecord],
                 cache_bytes: int = DEFAULT_CACHE_BYTES, disk_cache: ShardCache | None = None):
        self.path = remote.location(path)  # a directory or an s3:// prefix
        self.disk_cache = disk_cache  # remote stores: whole shards kept on local disk (cache.py)
        self.meta = meta
        self.config = StftConfig.from_dict(meta.stft)
        self.codec = CodecConfig.from_dict(meta.codec)
        self.geometry = Geometry.from_dict(meta.geometry)
        self.tracks = tracks
        self.cache_bytes = cache_bytes
        self._by_id = {track.id: track for track in tracks}
        self._arrays: dict[str, ts.TensorStore] = {}
        self._pid = os.getpid()
        self._context: ts.Context | None = None
        self.integrity = {name: array_integrity(self.path / ZARR_DIR / name) for name in meta.arrays}
        self._present_shards: set[tuple[str, int]] = set()  # shard files seen on disk (this process)
        self._identity: str | None = None

    @property
    def segment_frames(self) -> int:
        return self.geometry.segment_frames

    @property
    def bins(self) -> int:
        return self.config.bins

    def track(self, track: TrackRecord | str) -> TrackRecord:
        if isinstance(track, TrackRecord):
            return track
        try:
            return self._by_id[track]
        except KeyError:
            raise VRDataError(self.path, f"no track {track!r} in this store") from None

    def tracks_by_role(self, role: str, split: str | None = None) -> list[TrackRecord]:
        """Tracks of `role` (`pair`, `vocal`, `instrumental`, `pretrain`), optionally of one split."""
        return [t for t in self.tracks if t.role == role and (split is None or t.split == split)]

    def hours(self, role: str | None = None) -> float:
        return sum(t.duration for t in self.tracks if role is None or t.role == role) / 3600.0

    @property
    def chunk_checksums(self) -> bool:
        """Whether every Zarr array checksums its chunks (False: a store built before)."""
        return all(integrity.chunk_checksums for integrity in self.integrity.values())

    def identity(self) -> str:
        """A content id: STFT, codec, geometry, source manifests and tracks (id, role, split,
        frames). Two stores built from the same manifests with the same settings share it; a
        loader state or a checkpoint records it to refuse resuming on another store."""
        if self._identity is None:
            meta = self.meta
            record = {"stft": meta.stft, "codec": meta.codec, "geometry": meta.geometry, "manifests": meta.manifests,
                      "tracks": sorted((t.id, t.role, t.split, t.frames) for t in self.tracks)}
            self._identity = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self._identity

    # ------------------------------------------------------------------------ Zarr random access

    def array(self, name: str) -> ts.TensorStore:
        """The tensorstore handle of array `name`, opened once per process."""
        if self._pid != os.getpid():  # a forked worker must not reuse its parent's handles
            self._arrays, self._context, self._pid = {}, None, os.getpid()
        if name not in self._arrays:
            if name not in self.meta.arrays:
                raise VRDataError(self.path, f"no array {name!r} in this store (has {', '.join(self.meta.arrays)})")
            if self._context is None:
                self._context = default_context(self.path, {"cache_pool": {"total_bytes_limit": self.cache_bytes}})
            if self.disk_cache is not None:
                self._arrays[name] = open_array(self.disk_cache.array_dir(name), ts.Context(
                    {"cache_pool": {"total_bytes_limit": self.cache_bytes}}), read_only=True)
            else:
                self._arrays[name] = open_array(self.path / ZARR_DIR / name, self._context, read_only=True)
        return self._arrays[name]

    def _region(self, track: TrackRecord | str, source: str, start: int, stop: int | None) -> _Region:
        track = self.track(track)
        if source not in track.arrays:
            raise VRDataError(self.path, f"track {track.id} ({track.role}) has no source {source!r} "
                                         f"(has {', '.join(track.arrays)})")
        stop = track.frames if stop is None else stop
        if not 0 <= start <= stop <= track.frames:
            raise ValueError(f"frames {start}:{stop} are outside track {track.id} (0:{track.frames})")
        name = track.arrays[source]
        region = _Region(self.array(name), track.zarr_start + start, track.zarr_start + stop, name, track)
        if self.integrity[name].every_chunk_stored and self.disk_cache is None:  # the cache checks as it pins
            self._check_shards_exist(region)
        return region

    def _shard_indexes(self, region: _Region) -> range:
        """Indexes of the shards the region touches."""
        shard_frames = int(self.meta.arrays[region.name].get("shard_frames", self.geometry.shard_frames))
        return range(region.first // shard_frames, (max(region.last, region.first + 1) - 1) // shard_frames + 1)

    def _shard_files(self, region: _Region) -> list[tuple[int, Path | remote.ObjectPath]]:
        """(shard index, file) of every shard the region touches."""
        return [(index, shard_key(self.path / ZARR_DIR / region.name, index)) for index in self._shard_indexes(region)]

    def _check_shards_exist(self, region: _Region) -> None:
        """Every chunk of these arrays is stored, so an absent shard file under a track was
        deleted: without this check it would read as silence (the fill value). One stat per
        shard per process."""
        for index in self._shard_indexes(region):
            if (region.name, index) in self._present_shards:
                continue
            path = shard_key(self.path / ZARR_DIR / region.name, index)
            if not remote.is_file(path):
                raise VRDataError(path, f"Zarr shard missing in {region.describe()}; the store is damaged: "
                                        "run vrdata verify")
            self._present_shards.add((region.name, index))

    def _read_error(self, region: _Region, error: Exception) -> VRDataError:
        """A failed read as a one-line VRDataError naming the shard file and the track."""
        detail = _first_line(error)
        named = re.search(r'local file "([^"]+)"', str(error))
        path = named.group(1) if named else ", ".join(str(path) for _, path in self._shard_files(region))
        what = "damaged Zarr chunk (checksum mismatch)" if "igest mismatch" in str(error) else "unreadable Zarr data"
        return VRDataError(path, f"{what} in {region.describe()}: {detail}")

    def read_frames(self, track: TrackRecord | str, source: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stored float16 `(stop - start, 2, 2, bins)` of one source of a track.

        Frames are indexed from the track's first frame; a range outside `[0, track.frames]` is
        refused (ValueError) rather than clipped, so a caller never trains on padding unknowingly.
        """
        return self.read_many([(track, source, start, stop)])[0]

    def read_many(self, requests: Iterable[FrameRequest]) -> list[np.ndarray]:
        """`read_frames` of many `(track, source, start, stop)` at once: all reads are issued
        before any is awaited, so tensorstore overlaps their I/O and decompression."""
        regions = [self._region(*request) for request in requests]
        with self._pinned(regions):
            futures = [region.array[region.first:region.last].read() for region in regions]
            out = []
            for future, region in zip(futures, regions):
                try:
                    out.append(future.result())
                except (ValueError, RuntimeError) as error:
                    raise self._read_error(region, error) from None
        return out

    def _pinned(self, regions: list[_Region]):
        """With a disk cache: the regions' shards held on local disk while they are read."""
        if self.disk_cache is None:
            return contextlib.nullcontext()
        shards = [(region.name, index) for region in regions for index in self._shard_indexes(region)]
        tracks = {(region.name, index): region.describe() for region in regions for index in self._shard_indexes(region)}
        return self.disk_cache.pinned(shards, lambda name, index: tracks.get((name, index), f"array {name}"))

    def read_many_into(self, requests: Iterable[FrameRequest], outs: Sequence[np.ndarray]) -> None:
        """`read_many`, each region written straight into `outs[i]` (C-contiguous float16 views of
        shape `(stop - start, 2, 2, bins)`, e.g. slices of a batch buffer): no array per read and
        no copy afterwards. All reads are in flight at once."""
        regions = [self._region(*request) for request in requests]
        with self._pinned(regions):
            futures = [ts.array(out, copy=False, write=True).write(region.array[region.first:region.last])
                       for region, out in zip(regions, outs)]
            for future, region in zip(futures, regions):
                try:
                    future.result()
                except (ValueError, RuntimeError) as error:
                    raise self._read_error(region, error) from None

    def read_spectrogram(self, track: TrackRecord | str, source: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Complex64 `(2, bins, frames)` of frames `[start, stop)` (a view of a frames-major buffer)."""
        return decode(self.read_frames(track, source, start, stop))

    # ------------------------------------------------------------------------ side files

    def wds_shards(self, role: str | None = None) -> list[WdsShard]:
        index = read_json(self.path / WDS_DIR / WDS_INDEX)
        shards = [WdsShard.from_json(record) for record in index["shards"]]
        return [shard for shard in shards if role is None or shard.role == role]

    def rejects(self) -> list[BuildReject]:
        return [BuildReject.from_json(record) for record in _read_jsonl(self.path / REJECTS_JSONL)]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_arrays={}, _context=None)  # tensorstore handles do not cross processes
        return state

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, tracks={len(self.tracks)}, hours={self.hours():.2f})"


def open_store(path: str | Path, cache_bytes: int = DEFAULT_CACHE_BYTES, *, cache_dir: str | Path | None = None,
               cache_gb: float | None = None) -> Store:
    """Open the complete store at `path` (a directory or `s3://bucket/prefix`); an incomplete or
    unknown one is a one-line VRDataError. `cache_bytes` bounds the in-memory chunk cache;
    `cache_dir`/`cache_gb` (or `VR_CACHE_DIR`/`VR_CACHE_GB`) keep a remote store's shards on
    local disk (`vr_data.store.cache`)."""
    path = remote.location(path)
    meta = read_store_meta(path)
    if meta is None:
        raise VRDataError(path, f"not a store ({STORE_JSON} missing)")
    if not meta.complete:
        raise VRDataError(path, "store is incomplete (a build is running, was interrupted or is appending); "
                                "rerun the same vrdata build-shards command to finish it")
    tracks = [TrackRecord.from_json(record) for record in _read_jsonl(path / TRACKS_JSONL)]
    store = Store(path, meta, tracks, cache_bytes, cache_from_environment(path, cache_dir, cache_gb))
    if not store.chunk_checksums:
        warnings.warn(f"{path}: store built before chunk checksums: a damaged Zarr chunk or tar member can be "
                      "read as wrong values, and a deleted Zarr shard as silence, without an error; run "
                      "`vrdata verify` to check it, or rebuild it into a new --out", StoreIntegrityWarning, stacklevel=2)
    return store


def iter_wds_samples(store: Store, role: str, shards: Sequence[WdsShard | str] | None = None) -> Iterator[dict]:
    """Samples of the WebDataset shards of `role` (all, in index order, or the given ones).

    Each sample is `{"__key__", "json": {...}, source: float16 (segment_frames, 2, 2, bins)...}`.
    Shard paths must stay inside `wds/`; members are validated (see `vr_data.store.wds.iter_tar_samples`).
    """
    chosen = store.wds_shards(role) if shards is None else shards
    for shard in chosen:
        relative = shard.path if isinstance(shard, WdsShard) else shard
        yield from iter_tar_samples(wds_member_path(store.path / WDS_DIR, relative))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:240] if text else type(error).__name__


def _read_jsonl(path: Path | remote.ObjectPath) -> list[dict]:
    try:
        text = remote.read_text(path)
    except FileNotFoundError:
        raise VRDataError(path, "file not found (an incomplete or damaged store)") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise VRDataError(path, f"line {number} is not JSON ({error.msg})") from None
    return records


__all__ = ["FrameRequest", "Store", "StoreIntegrityWarning", "TrackRecord", "iter_wds_samples", "open_store"]
