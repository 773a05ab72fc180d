"""Verify a complete store: checksums, Zarr/WebDataset agreement, frame counts vs manifests.

Every tar's size and sha256 are checked against `wds/index.json`; every track's frames are read
back from Zarr and compared bit for bit (float16) with its WebDataset segments (the zero padding
of a last segment too, in stores before version 2); a pack's tracks are checked together, its
tar read once; every track's frame count is checked against the frames its manifest predicts (the
manifest is re-read when it is still at its recorded path with the recorded sha256). Each
damaged tar, Zarr shard and track is named; a value mismatch under an intact tar is blamed on
the Zarr shard that holds those frames.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vr_data.errors import VRDataError
from vr_data.catalog.manifest import file_sha256, read_manifest
from vr_data.parallel import map_unordered
from vr_data.store import Store, open_store
from vr_data.store.arrays import open_array, read_region, shard_key
from vr_data.store.format import WDS_DIR, ZARR_DIR, TrackRecord, WdsShard
from vr_data.store.plan import expected_frames, planned_roles
from vr_data.store import remote
from vr_data.store.wds import iter_tar_samples, sample_key, wds_member_path


@dataclass(frozen=True)
class Damage:
    """One problem: `kind` is `wds_shard`, `zarr_shard` or `track`; `name` a path or track id."""

    kind: str
    name: str
    reason: str


@dataclass
class VerifyReport:
    damages: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what could not be checked, and why
    shards: int = 0
    tracks: int = 0
    frames: int = 0

    @property
    def ok(self) -> bool:
        return not self.damages

    def to_json(self) -> dict:
        """For `vrdata verify --json`."""
        return {"ok": self.ok, "tracks": self.tracks, "frames": self.frames, "shards": self.shards,
                "damages": [{"kind": d.kind, "name": d.name, "reason": d.reason} for d in self.damages],
                "notes": list(self.notes)}


def verify_store(
    path: str | Path, executor: Executor | None = None,
    on_shard: Callable[[WdsShard], None] | None = None,
    on_track: Callable[[TrackRecord], None] | None = None,
) -> VerifyReport:
    """Re-read the whole store at `path` and report damage (an empty list means intact)."""
    store = open_store(path)
    report = VerifyReport()
    bad_tars: set[str] = set()
    for shard, problem in map_unordered(_check_shard, [(store.path, s) for s in store.wds_shards()], executor):
        report.shards += 1
        if problem is not None:
            report.damages.append(Damage("wds_shard", f"{WDS_DIR}/{shard[1].path}", problem))
            bad_tars.add(shard[1].path)
        if on_shard is not None:
            on_shard(shard[1])
    suspects: dict[str, str] = {}
    units: dict[str, list[TrackRecord]] = {}
    for track in store.tracks:
        units.setdefault(track.pack or track.id, []).append(track)
    tasks = [(store.path, tuple(tracks), store.geometry.segment_frames, store.geometry.shard_frames, store.geometry.wds)
             for tracks in units.values()]
    for task, results in map_unordered(_check_unit, tasks, executor):
        for track, (problems, zarr_suspects) in zip(task[1], results):
            report.tracks += 1
            report.frames += track.frames
            report.damages.extend(Damage("track", track.id, problem) for problem in problems)
            for zarr_shard, tar, reason in zarr_suspects:
                if tar is None or tar not in bad_tars:
                    suspects.setdefault(zarr_shard, reason)
            if on_track is not None:
                on_track(track)
    report.damages.extend(Damage("zarr_shard", name, reason) for name, reason in sorted(suspects.items()))
    _check_frame_counts(store, report)
    report.damages.sort(key=lambda d: (d.kind, d.name))
    return report


def _check_shard(task: tuple[Path, WdsShard]) -> str | None:
    store_path, shard = task
    try:
        path = wds_member_path(store_path / WDS_DIR, shard.path)
    except VRDataError as error:
        return error.reason
    size = remote.size(path)
    if size is None:
        return "file missing"
    if size != shard.bytes:
        return f"{size} bytes, index.json says {shard.bytes}"
    digest = remote.sha256(path)
    if digest != shard.sha256:
        return f"sha256 {digest[:12]}... differs from index.json's {shard.sha256[:12]}..."
    return None


def _check_unit(task: tuple[Path, tuple[TrackRecord, ...], int, int, bool]) -> list[tuple[list[str], list]]:
    """Per track of a build task (a track, or a pack's tracks sharing tars): its problems and its
    suspect Zarr shards `(shard, the tar it disagrees with or None when the shard cannot be read
    at all, reason)`; each tar is read once."""
    store_path, tracks, segment_frames, shard_frames, with_wds = task
    checks = {track.id: _TrackCheck(store_path, track, segment_frames, shard_frames, with_wds) for track in tracks}
    tars = list(dict.fromkeys(tar for track in tracks for tar in track.wds_shards))
    for tar in tars:
        try:
            for sample in iter_tar_samples(wds_member_path(store_path / WDS_DIR, tar)):
                owner = checks.get(sample.get("json", {}).get("track")) or checks.get(sample["__key__"].rpartition("_")[0])
                if owner is None:
                    first = next(iter(checks.values()))
                    first.problems.append(f"{WDS_DIR}/{tar} holds sample {sample['__key__']} of no track it lists")
                    continue
                owner.add(sample, tar)
        except VRDataError as error:
            for check in checks.values():
                if tar in check.track.wds_shards and not check.broken:
                    check.problems.append(f"cannot read {WDS_DIR}/{tar} ({error.reason})")
                    check.broken = True
    return [checks[track.id].finish() for track in tracks]


class _TrackCheck:
    """One track's frames read from Zarr, compared with its samples as they come."""

    def __init__(self, store_path: Path, track: TrackRecord, segment_frames: int, shard_frames: int, with_wds: bool):
        self.track, self.segment_frames, self.shard_frames = track, segment_frames, shard_frames
        self.problems: list[str] = []
        self.suspects: list[tuple[str, str | None, str]] = []
        self.segment = 0
        self.broken = False
        self.expected_segments = -(-track.frames // segment_frames) if with_wds else 0
        if track.segments != self.expected_segments:
            self.problems.append(f"{track.segments} segments recorded for {track.frames} frames "
                                 f"(expected {self.expected_segments})")
        self.stored: dict[str, np.ndarray] = {}
        stop = track.zarr_start + track.frames
        for source, name in track.arrays.items():
            # Without tars there is no second copy to compare: every frame is still read (decoded).
            try:
                array = open_array(store_path / ZARR_DIR / name, read_only=True)
                self.stored[source] = read_region(array, track.zarr_start, stop, f"{ZARR_DIR}/{name}")
            except VRDataError as error:
                self.problems.append(f"cannot read {source} from Zarr array {name} ({error.reason})")
                self.suspects.extend(_unreadable_shards(store_path, name, track.zarr_start, stop, shard_frames))
        self.broken = len(self.stored) < len(track.arrays)

    def add(self, sample: dict, tar: str) -> None:
        if self.broken:
            return
        track, segment = self.track, self.segment
        self.problems.extend(_compare_sample(track, sample, segment, self.segment_frames, self.stored))
        start = segment * self.segment_frames
        valid = max(0, min(self.segment_frames, track.frames - start))
        for source in track.arrays:
            if source not in sample:
                continue
            values = sample[source]
            padding = values[valid:]
            if not _same_bits(values[:valid], self.stored[source][start:start + valid]) or \
                    len(values) > self.segment_frames or np.any(padding.view(np.uint16)):
                index = (track.zarr_start + start) // self.shard_frames
                zarr_shard = shard_key(Path(ZARR_DIR) / track.arrays[source], index).as_posix()
                self.problems.append(f"segment {segment} of {source} differs between {zarr_shard} and {WDS_DIR}/{tar}")
                self.suspects.append((zarr_shard, tar, f"frames differ from the intact {WDS_DIR}/{tar} "
                                                       f"(track {track.id})"))
        self.segment += 1

    def finish(self) -> tuple[list[str], list[tuple[str, str | None, str]]]:
        if not self.broken and self.segment != self.expected_segments:
            self.problems.append(f"{self.segment} WebDataset segments, expected {self.expected_segments}")
        return self.problems, self.suspects


def _unreadable_shards(store_path: Path, name: str, start: int, stop: int, shard_frames: int):
    """The shards of `[start, stop)` of array `name` that fail to read, one read per shard."""
    try:
        array = open_array(store_path / ZARR_DIR / name, read_only=True)
    except VRDataError as error:
        yield f"{ZARR_DIR}/{name}", None, error.reason
        return
    for index in range(start // shard_frames, (stop - 1) // shard_frames + 1):
        try:
            read_region(array, index * shard_frames, (index + 1) * shard_frames, name)
        except VRDataError as error:
            yield shard_key(Path(ZARR_DIR) / name, index).as_posix(), None, f"unreadable ({error.reason})"


def _compare_sample(track: TrackRecord, sample: dict, segment: int, segment_frames: int, stored: dict) -> list[str]:
    problems = []
    key = sample_key(track.id, segment)
    meta = sample.get("json", {})
    start = segment * segment_frames
    want = {"track": track.id, "segment": segment, "start_frame": start,
            "frames": min(segment_frames, track.frames - start)}
    if sample["__key__"] != key:
        problems.append(f"sample {segment} has key {sample['__key__']!r}, expected {key!r}")
    wrong = {name: meta.get(name) for name, value in want.items() if meta.get(name) != value}
    if wrong:
        problems.append(f"sample {key} metadata {wrong} disagrees with the track ({want})")
    missing = [source for source in stored if source not in sample]
    if missing:
        problems.append(f"sample {key} lacks {', '.join(missing)}")
    return problems


def _same_bits(left: np.ndarray, right: np.ndarray) -> bool:
    """Exact float16 equality, bit for bit (NaN-safe, distinguishes -0)."""
    return left.shape == right.shape and left.dtype == right.dtype and np.array_equal(
        np.ascontiguousarray(left).view(np.uint16), np.ascontiguousarray(right).view(np.uint16))


def _manifest_location(store_path: Path, recorded: str) -> Path:
    """Where a recorded manifest is: stores record absolute paths; stores built before that
    recorded the path as given, relative to the build's working directory, which is tried
    first and then the store's parent folder."""
    path = Path(recorded)
    if path.is_absolute() or path.is_file() or isinstance(store_path, remote.ObjectPath):
        return path
    beside = Path(store_path).resolve().parent / path
    return beside if beside.is_file() else path


def _check_frame_counts(store: Store, report: VerifyReport) -> None:
    """Frames of each track vs its manifest; tracks a manifest has that the store lacks."""
    by_manifest: dict[str, list[TrackRecord]] = {}
    for track in store.tracks:
        by_manifest.setdefault(track.manifest, []).append(track)
        if track.frames != track.expected_frames:
            report.damages.append(Damage("track", track.id, f"{track.frames} frames, the manifest's duration "
                                                            f"gives {track.expected_frames}"))
    accounted = {reject.id for reject in store.rejects()} | {track.id for track in store.tracks}
    for ref in store.meta.manifests:
        path = _manifest_location(store.path, ref["path"])
        if not path.is_file() or file_sha256(path) != ref["sha256"]:
            report.notes.append(f"manifest {path} is gone or changed since the build: checked frame counts "
                                "against the values recorded at build time")
            continue
        manifest = read_manifest(path)
        built = {track.id: track for track in by_manifest.get(ref["sha256"], [])}
        for item in manifest.items:
            for track_id, role in planned_roles(item):
                if track_id in built:
                    frames = expected_frames(item, store.config, role)
                    if built[track_id].frames != frames:
                        report.damages.append(Damage("track", track_id, f"{built[track_id].frames} frames, manifest "
                                                                        f"{path.name} gives {frames}"))
                elif track_id not in accounted:
                    report.damages.append(Damage("track", track_id,
                                                 f"in manifest {path.name} but neither built nor rejected"))


__all__ = ["Damage", "VerifyReport", "verify_store"]
