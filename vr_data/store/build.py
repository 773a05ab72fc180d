"""Build a spectrogram store from manifests: plan, per-track tasks on any Executor, finalise.

`build_store` writes `plan.json` and an incomplete `store.json` first, then runs one task per
track, or per pack of short tracks (`build_unit`; packs: `vr_data.store.plan`), on the executor:
decode -> STFT -> encode -> write the task's own whole Zarr shards and its own tars -> write a
done-record atomically (one per task: a pack's lists its tracks). A rerun (after a crash or a
SIGKILL) skips tasks whose done-record and tars exist and redoes the rest; rewriting a task's
own shards is safe because no other task touches them. Only when every planned track has a
done-record are `tracks.jsonl`, `wds/index.json`, `rejects.jsonl` and finally `store.json` with
`"complete": true` written. A file that fails at build time becomes a reject, never an abort.

What is decided before anything is written: the inputs are checked (roots exist, items exist,
every unfinished track's manifest is given) and the store is locked (`.build/lock`, one builder
at a time), so a refused command leaves the store as it was. A source file that is missing or
cannot be opened is a transient failure, not a reject: its track gets no done-record, the store
stays incomplete, and the build ends with an error saying to fix the paths and rerun.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vr_data import __version__, errors
from vr_data.store.codec import CodecConfig, encode
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import Item, Manifest, file_sha256
from vr_data.catalog.sources import load_item_source
from vr_data.parallel import map_unordered
from vr_data.dsp.stft import StftConfig, block_stft
from vr_data.store import remote
from vr_data.store.arrays import default_context, ensure_array, open_array, write_group
from vr_data.store.lock import build_lock
from vr_data.audio import load_audio
from vr_data.audio.decode import UNAVAILABLE, silence_reason
from vr_data.io import UNWRITABLE, os_reason
from vr_data.store.format import (
    BUILD_DIR, DONE_DIR, PLAN_JSON, REJECTS_JSONL, ROLE_SOURCES, STORE_JSON, TRACKS_JSONL, WDS_DIR, WDS_INDEX,
    ZARR_DIR, BuildReject, StoreMeta, TrackRecord, WdsShard, array_name, read_store_meta,
)
from vr_data.store.plan import BuildPlan, Geometry, PlannedTrack, new_plan, planned_roles
from vr_data.store.wds import TrackTarWriter, compressed_npy, npy_parts, sample_key
from vr_data.store.codec import compressed_bytes

LOCK_FILE = "lock"  # in .build/: held by the one process building the store
# Codes of a source that may well be there on a rerun (a wrong root, a disk not mounted, a
# permission being fixed): not rejects, the track is retried.
TRANSIENT_CODES = (errors.MISSING, UNAVAILABLE)

STFT_BLOCK_FRAMES = 128  # frames transformed and encoded at once: cache-sized (measured 1.3x faster than 1024), and bounds the working memory whatever the track length
# The store's default codec: the codec module's quantiser with blosc-lz4 (level 9) as the
# lossless stage. Measured here per audio-second of encoded music, on one core: blosc-lz4 9
# compresses in 0.33 ms and decodes in 0.10 ms at 0.47 GB per stereo audio-hour; the codec
# module's default blosc-lz4hc 5 decodes as fast and packs to 0.38 GB/h but compresses in
# 3.7 ms, ten times the rest of a build's per-second work; blosc-zstd 1: 0.75 ms, 0.34 ms, 0.29 GB/h.
DEFAULT_CODEC = CodecConfig(compressor="blosc-lz4", level=9)


@dataclass(frozen=True)
class BuildOptions:
    """Checks at build time: `min_seconds` of audio, `silence_dbfs` peak level, `downmix` > 2
    channels instead of refusing, `verify_hashes` of files against the manifest;
    `measure_memory` resets and reports each task's peak RSS (Linux)."""

    min_seconds: float = 1.0
    silence_dbfs: float = -60.0
    downmix: bool = False
    verify_hashes: bool = True
    measure_memory: bool = False


@dataclass(frozen=True)
class TrackTask:
    """Everything one worker needs to build one track (picklable)."""

    store: str
    track: PlannedTrack
    root: str
    manifest_path: str
    item: Item
    stft: StftConfig
    codec: CodecConfig
    geometry: Geometry
    options: BuildOptions


@dataclass
class TrackOutcome:
    """What happened to one planned track; `stats` has seconds per stage and, with
    `measure_memory`, `rss_start_kb`/`peak_rss_kb` of the worker process during the task."""

    id: str
    role: str
    status: str                   # "built", "skipped" (done earlier), "rejected" or "failed" (retried on a rerun)
    duration: float               # seconds of audio (the manifest's duration for rejects)
    record: TrackRecord | None = None
    reject: BuildReject | None = None
    shards: list[WdsShard] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    reason: str = ""              # why a "failed" track could not read its files


@dataclass
class BuildResult:
    store: Path
    outcomes: list[TrackOutcome]
    elapsed: float
    zarr_bytes: int
    wds_bytes: int
    already_complete: bool = False

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def seconds(self, status: str | None = None) -> float:
        return sum(o.duration for o in self.outcomes if status is None or o.status == status)

    @property
    def rejects(self) -> list[BuildReject]:
        return [outcome.reject for outcome in self.outcomes if outcome.reject is not None]

    def to_json(self) -> dict:
        """A summary for `vrdata build-shards --json`."""
        counts: dict[str, int] = {}
        for reject in self.rejects:
            counts[reject.code] = counts.get(reject.code, 0) + 1
        return {
            "store": str(self.store), "complete": True, "already_complete": self.already_complete,
            "tracks": {status: self.count(status) for status in ("built", "skipped", "rejected")},
            "hours": {status: self.seconds(status) / 3600.0 for status in ("built", "skipped", "rejected")},
            "zarr_bytes": self.zarr_bytes, "wds_bytes": self.wds_bytes, "elapsed_seconds": self.elapsed,
            "rejects": dict(sorted(counts.items())),
        }


@dataclass
class DryRun:
    """What `build_store` would do, from `plan_store`: nothing is written.

    `to_build` are the planned tracks without a done-record; sizes are estimates in bytes:
    `zarr_bytes` from encoding and compressing `sample_seconds` of audio of a few tracks with the
    store's codec (0 when no sample could be decoded), `wds_bytes` exact for plain tars (up to
    the json members) and scaled from the same sample for blosc-compressed ones.
    """

    store: Path
    new_store: bool
    to_build: list[PlannedTrack]
    done: int
    zarr_bytes: float
    wds_bytes: float
    sample_seconds: float
    sample_tracks: int
    frames: int

    def hours(self) -> float:
        return sum(track.duration for track in self.to_build) / 3600.0

    def by_role(self) -> dict[str, dict]:
        roles: dict[str, dict] = {}
        for track in self.to_build:
            role = roles.setdefault(track.role, {"tracks": 0, "hours": 0.0})
            role["tracks"] += 1
            role["hours"] += track.duration / 3600.0
        return dict(sorted(roles.items()))

    def to_json(self) -> dict:
        return {
            "store": str(self.store), "dry_run": True, "new_store": self.new_store, "done_earlier": self.done,
            "to_build": {"tracks": len(self.to_build), "hours": self.hours(), "frames": self.frames,
                         "by_role": self.by_role()},
            "estimate": {"zarr_bytes": round(self.zarr_bytes), "wds_bytes": round(self.wds_bytes),
                         "sample_seconds": self.sample_seconds, "sample_tracks": self.sample_tracks},
        }


def build_store(
    manifests: list[Manifest],
    out: str | Path,
    *,
    stft: StftConfig | None = None,
    codec: CodecConfig | None = None,
    geometry: Geometry | None = None,
    options: BuildOptions = BuildOptions(),
    executor: Executor | None = None,
    append: bool = False,
    on_start: Callable[[float, list[TrackOutcome]], None] | None = None,
    on_track: Callable[[TrackOutcome], None] | None = None,
) -> BuildResult:
    """Build (or resume, or `append` to) the store at `out` from `manifests`.

    `stft`/`codec`/`geometry` None means the defaults (`DEFAULT_CODEC`) for a new store and the store's own for
    an existing one; a value that differs from an existing store's is refused. The order of
    `manifests` decides where tracks go in the arrays. `on_start(seconds_to_build, skipped)` is
    called once before the tasks run, `on_track(outcome)` as each finishes.
    """
    started = time.perf_counter()
    out = remote.location(out)  # a directory or an s3:// prefix (docs/store.md: remote stores)
    created = isinstance(out, Path) and not out.exists()
    _check_out(out)
    refused = False
    try:
        with build_lock(out / BUILD_DIR / LOCK_FILE, "vrdata build-shards", subject=out) as lease:
            try:
                return _build_locked(manifests, out, stft, codec, geometry, options, executor, append, on_start,
                                     on_track, started, lease)
            except BaseException:
                # Refused before its plan was written, a first build leaves no empty store
                # directory behind. Only the lock holder tidies: a builder refused because
                # the store is in use must not touch a live build's folders.
                refused = created and not (out / PLAN_JSON).exists()
                raise
    finally:
        if refused:
            _remove_empty_tree(out)


def _build_locked(manifests, out: remote.Location, stft, codec, geometry, options, executor, append, on_start,
                  on_track, started: float, lease=None) -> BuildResult:
    plan, added, meta = _load_or_plan(out, manifests, stft, codec, geometry, append)
    # A plan saved by an append that was killed before it marked the store incomplete has
    # tracks without done-records: those still need building.
    if meta is not None and meta.complete and not added:
        records = _done_records(out, plan)
        if all(records[t.id] is not None for t in plan.tracks):
            outcomes = [_skipped(track, records[track.id]) for track in plan.tracks]
            return BuildResult(out, outcomes, time.perf_counter() - started, *_sizes(out), already_complete=True)
    # Everything is validated before the first write, so a refused command (an --append without
    # the manifests of unfinished tracks, a wrong root) leaves plan.json and the store unchanged.
    skipped, tasks = _tasks(out, plan, manifests, options)
    _check_roots({task.root: task.manifest_path for task in tasks})
    # The plan first (a directory with a plan is a store to resume), then the incomplete mark,
    # before any array or tar changes; until the mark, readers see the previous complete store.
    remote.write_json(out / PLAN_JSON, plan.to_json())
    remote.write_json(out / STORE_JSON, _store_meta(plan, complete=False).to_json())
    _ensure_arrays(out, plan)
    _remove_temporaries(out)
    if on_start is not None:
        on_start(sum(task.track.duration for task in tasks), skipped)
    outcomes = {outcome.id: outcome for outcome in skipped}
    for _, unit_outcomes in map_unordered(build_unit, _units(tasks), executor):
        for outcome in unit_outcomes:
            outcomes[outcome.id] = outcome
            if on_track is not None:
                on_track(outcome)
    failed = [outcome for outcome in outcomes.values() if outcome.status == "failed"]
    if failed:
        raise VRDataError(out, f"{len(failed)} of {len(plan.tracks)} tracks could not read their files "
                               f"({failed[0].reason}); the store stays incomplete: fix the paths "
                               "(M.jsonl=ROOT) and rerun the same command")
    if lease is not None:
        lease.confirm()  # a builder that lost its lease must not mark another's store complete
    finalise_store(out, plan)
    ordered = [outcomes[track.id] for track in plan.tracks]
    return BuildResult(out, ordered, time.perf_counter() - started, *_sizes(out))


def _tasks(out: remote.Location, plan: BuildPlan, manifests: list[Manifest],
           options: BuildOptions) -> tuple[list[TrackOutcome], list[TrackTask]]:
    """Tracks done earlier (skipped) and the tasks of the rest; refuses a track to build whose
    manifest was not given."""
    by_id = {track_id: (manifest, item) for manifest in manifests for item in manifest.items
             for track_id, _ in planned_roles(item)}
    skipped, tasks = [], []
    records = _done_records(out, plan)
    # A task is redone whole: a pack with one track to redo rebuilds all of its tracks.
    redo = {track.task_key for track in plan.tracks
            if records[track.id] is None or not _outputs_exist(out, records[track.id])}
    for track in plan.tracks:
        done = records[track.id]
        if track.task_key not in redo:
            skipped.append(_skipped(track, done))
        elif track.id not in by_id:
            raise VRDataError(out, f"track {track.id} (library {track.library}) is not finished and its manifest "
                                   "was not given; rerun with the same manifests")
        else:
            manifest, item = by_id[track.id]
            tasks.append(TrackTask(str(out), track, str(manifest.root), _absolute(manifest.source_path), item,
                                   plan.stft, plan.codec, plan.geometry, options))
    return skipped, tasks


def _check_out(out: remote.Location) -> None:
    """`--out` must be a store, an empty directory or nothing yet; creates it."""
    if isinstance(out, remote.ObjectPath):
        if not remote.is_file(out / PLAN_JSON) and any(not name.startswith(BUILD_DIR + "/")
                                                       for name in remote.list_sizes(out)):
            raise VRDataError(out, "holds objects and is not a store (no plan.json); choose another --out")
        return
    if out.exists() and not out.is_dir():
        raise VRDataError(out, "--out exists and is not a directory; give a store directory")
    if out.is_dir() and any(p.name != BUILD_DIR for p in out.iterdir()) and not (out / PLAN_JSON).exists():
        raise VRDataError(out, "exists, is not empty and is not a store (no plan.json); choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VRDataError(out, f"cannot create the store directory ({os_reason(error)})", UNWRITABLE) from None


def _check_roots(roots: dict[str, str]) -> None:
    """Every manifest root with tracks to build exists: a wrong root is one clear error, not a
    store of rejects."""
    for root, manifest_path in roots.items():
        if not Path(root).is_dir():
            raise VRDataError(manifest_path, f"its root {root} does not exist here; give the right one as "
                                             "M.jsonl=ROOT (or --root)", errors.MISSING)


def _remove_empty_tree(path: Path) -> None:
    """Remove `path` and its sub-folders if they hold no file (what a refused build created)."""
    if not path.is_dir():
        return
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            return
    try:
        path.rmdir()
    except OSError:
        pass


def _absolute(path: Path | str | None) -> str:
    """A manifest's path as the store records it: absolute, so `verify` finds it from anywhere."""
    return os.path.abspath(path) if path is not None else ""


def plan_store(
    manifests: list[Manifest],
    out: str | Path,
    *,
    stft: StftConfig | None = None,
    codec: CodecConfig | None = None,
    geometry: Geometry | None = None,
    append: bool = False,
    sample_tracks: int = 3,
    sample_seconds: float = 10.0,
) -> DryRun:
    """What `build_store` with the same arguments would build, and its estimated size (see
    `DryRun`); the same refusals, and nothing written.

    The Zarr estimate encodes `sample_seconds` from the middle of up to `sample_tracks` tracks
    (spread over the plan) with the store's STFT and codec, and scales their compressed bytes
    per frame to all the frames to build.
    """
    out = remote.location(out)
    if isinstance(out, Path) and out.exists() and not out.is_dir():
        raise VRDataError(out, "--out exists and is not a directory; give a store directory")
    plan, added, meta = _load_or_plan(out, manifests, stft, codec, geometry, append)
    skipped, tasks = _tasks(out, plan, manifests, BuildOptions())
    _check_roots({task.root: task.manifest_path for task in tasks})
    frames = sum(task.track.expected_frames for task in tasks)
    zarr_per_frame, wds_ratio, seconds, used = _sample_compression(tasks, plan, sample_tracks, sample_seconds)
    sources = {task.track.id: len(ROLE_SOURCES[task.track.role]) for task in tasks}
    zarr_bytes = sum(zarr_per_frame * task.track.expected_frames * sources[task.track.id] for task in tasks)
    wds_bytes = 0.0
    if plan.geometry.wds:
        for unit in _units(tasks):
            plain = _plain_tar_bytes([task.track for task in unit], plan)
            if plan.geometry.wds_compression == "none":
                wds_bytes += plain
            else:
                wds_bytes += plain * wds_ratio
    return DryRun(store=out, new_store=meta is None and not remote.is_file(out / PLAN_JSON),
                  to_build=[task.track for task in tasks], done=len(skipped), zarr_bytes=zarr_bytes,
                  wds_bytes=wds_bytes, sample_seconds=seconds, sample_tracks=used, frames=frames)


def _plain_tar_bytes(tracks: list[PlannedTrack], plan: BuildPlan) -> int:
    """Bytes of the uncompressed tars of one build task (a track, or a pack's tracks), as
    `TrackTarWriter` lays them out: whole segments, then each track's last one unpadded (json
    members counted as one block each; they are about 150 bytes)."""
    geometry = plan.geometry
    block = 512

    def sample(frames: int, sources: int) -> int:
        array_bytes = frames * 2 * 2 * plan.stft.bins * 2 + 128  # float16 data + npy header
        return (3 * block + -(-array_bytes // block) * block) * sources + 4 * block

    total = 0
    for track in tracks:
        sources = len(ROLE_SOURCES[track.role])
        whole, rest = divmod(track.expected_frames, geometry.segment_frames)
        total += whole * sample(geometry.segment_frames, sources) + (sample(rest, sources) if rest else 0)
    parts = max(1, math.ceil(total / geometry.wds_shard_bytes))
    return total + parts * 10240  # end-of-archive blocks and record padding, about one record per tar


def _sample_compression(tasks: list[TrackTask], plan: BuildPlan, count: int,
                        seconds: float) -> tuple[float, float, float, int]:
    """Compressed Zarr bytes per stored frame and source, the blosc/plain ratio of WebDataset
    members, seconds sampled and tracks used, from a few decoded excerpts (0, 1, 0, 0 if none)."""
    if not tasks or count <= 0:
        return 0.0, 1.0, 0.0, 0
    step = max(1, len(tasks) // count)
    compressed = frames = plain = packed = 0
    sampled, used = 0.0, 0
    for task in tasks[::step][:count]:
        manifest = Manifest(library=task.track.library, role=task.track.role, root=Path(task.root), items=[],
                            source_path=Path(task.manifest_path))
        source = ROLE_SOURCES[task.track.role][0]
        start = max(0.0, task.track.duration / 2 - seconds / 2)
        try:
            paths = manifest.source_paths(task.item, source)
            audio = None
            for path in paths:
                # Checks off (silence, channels): a sample only measures how well audio compresses.
                part = load_audio(path, plan.stft.sample_rate, silence_dbfs=None, start_seconds=start,
                                  max_seconds=seconds, downmix=True)
                audio = part if audio is None else audio[:, :part.shape[1]] + part[:, :audio.shape[1]]
        except VRDataError:
            continue  # an unreadable sample track: estimate from the others
        stored_frames = plan.stft.frames_for(audio.shape[1])
        shard = _encoded_shard(audio, plan.stft, plan.codec, 0, stored_frames, stored_frames, {"stft": 0.0, "encode": 0.0})
        compressed += compressed_bytes(shard, plan.codec, plan.geometry.chunk_frames)
        frames += stored_frames
        if plan.geometry.wds and plan.geometry.wds_compression != "none":
            for first in range(0, stored_frames, plan.geometry.segment_frames):
                segment = shard[first:first + plan.geometry.segment_frames]
                plain += segment.nbytes
                packed += len(compressed_npy(segment))
        sampled += audio.shape[1] / plan.stft.sample_rate
        used += 1
    if not frames:
        return 0.0, 1.0, 0.0, 0
    return compressed / frames, (packed / plain if plain else 1.0), sampled, used


def existing_configs(out: str | Path) -> tuple[StftConfig, CodecConfig, Geometry] | None:
    """The configs of the store (complete or not) at `out`, or None if there is none yet."""
    path = remote.location(out) / PLAN_JSON
    if not remote.is_file(path):
        return None
    plan = BuildPlan.load(path)
    return plan.stft, plan.codec, plan.geometry


def _load_or_plan(out: Path, manifests: list[Manifest], stft, codec, geometry, append: bool):
    """The plan (existing or new, extended with new items), the new tracks, and store.json if any."""
    plan_path = out / PLAN_JSON
    meta = read_store_meta(out) if not isinstance(out, Path) or out.is_dir() else None
    if remote.is_file(plan_path):
        plan = BuildPlan.load(plan_path)
        _check_same(out, "STFT config", plan.stft, stft)
        _check_same(out, "codec", plan.codec, codec)
        _check_same(out, "store geometry", plan.geometry, geometry)
        added = plan.extend(manifests)
        if added and not append:
            raise VRDataError(out, f"{len(added)} items of the given manifests are not in this store; "
                                   "pass --append to add them (or build into a new --out)")
        return plan, added, meta
    if isinstance(out, Path) and out.is_dir() and any(p.name != BUILD_DIR for p in out.iterdir()):
        raise VRDataError(out, "exists, is not empty and is not a store (no plan.json); choose another --out")
    plan = new_plan(stft or StftConfig(), codec or DEFAULT_CODEC, geometry or Geometry())
    added = plan.extend(manifests)
    if not plan.tracks:
        raise VRDataError(out, "the manifests have no items: nothing to build")
    return plan, added, meta


def _check_same(out: Path, what: str, existing, requested) -> None:
    if requested is not None and requested != existing:
        raise VRDataError(out, f"store was built with {what} {existing.to_dict()}, this build asks for "
                               f"{requested.to_dict()}; build into a new --out")


def _store_meta(plan: BuildPlan, complete: bool) -> StoreMeta:
    arrays = {
        name: {"shape": [frames, 2, 2, plan.stft.bins], "chunk_frames": plan.geometry.chunk_frames,
               "shard_frames": plan.geometry.shard_frames}
        for name, frames in sorted(plan.frames_by_array().items())
    }
    return StoreMeta(
        complete=complete, stft=plan.stft.to_dict(), codec=plan.codec.to_dict(), geometry=plan.geometry.to_dict(),
        manifests=[ref.to_json() for ref in plan.manifests], arrays=arrays, package_version=__version__,
        created=plan.created,
    )


def _ensure_arrays(out: remote.Location, plan: BuildPlan) -> None:
    write_group(out / ZARR_DIR)
    for name, frames in plan.frames_by_array().items():
        ensure_array(out / ZARR_DIR / name, frames, plan.stft.bins, plan.geometry.chunk_frames,
                     plan.geometry.shard_frames, plan.codec)


def _remove_temporaries(out: Path) -> None:
    """Temporary files of killed tasks (`.NAME.tmp-PID`): never read, safe to delete. A bucket has
    none: objects appear whole or not at all."""
    if not isinstance(out, Path):
        return
    for directory in (out / WDS_DIR, out / BUILD_DIR):
        if directory.exists():
            for path in directory.rglob(".*.tmp-*"):
                path.unlink(missing_ok=True)


def _done_path(out: remote.Location, key: str) -> remote.Location:
    """The done-record of build task `key` (a track id, or a pack's key)."""
    return out / BUILD_DIR / DONE_DIR / f"{key}.json"


def _read_done(out: remote.Location, key: str) -> dict | None:
    path = _done_path(out, key)
    try:
        return json.loads(remote.read_bytes(path))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # unreadable: rebuild the task


def _done_records(out: remote.Location, plan: BuildPlan) -> dict[str, dict | None]:
    """Track id -> its done-record (`{"status": "built", "track", "wds"}` or `{"status":
    "rejected", "reject"}`), or None when its task has none; each task's file read once. A
    packed track's record is its entry in the pack's, with the pack's tars."""
    by_key: dict[str, dict | None] = {}
    records: dict[str, dict | None] = {}
    for track in plan.tracks:
        key = track.task_key
        if key not in by_key:
            by_key[key] = _read_done(out, key)
        done = by_key[key]
        if done is not None and track.pack is not None:
            entry = done.get("tracks", {}).get(track.id) if done.get("status") == "pack" else None
            done = None if entry is None else (entry if entry["status"] == "rejected" else {**entry, "wds": done["wds"]})
        records[track.id] = done
    return records


def _outputs_exist(out: Path, done: dict) -> bool:
    if done.get("status") == "rejected":
        return True
    return all(remote.size(out / WDS_DIR / shard["path"]) == shard["bytes"] for shard in done.get("wds", []))


def _skipped(track: PlannedTrack, done: dict) -> TrackOutcome:
    if done.get("status") == "rejected":
        reject = BuildReject.from_json(done["reject"])
        return TrackOutcome(track.id, track.role, "rejected", track.duration, reject=reject)
    record = TrackRecord.from_json(done["track"])
    shards = [WdsShard.from_json(shard) for shard in done["wds"]]
    return TrackOutcome(track.id, track.role, "skipped", record.duration, record=record, shards=shards)


def finalise_store(out: remote.Location, plan: BuildPlan) -> None:
    """Write tracks.jsonl, wds/index.json, rejects.jsonl, then store.json `complete: true` last."""
    records, shards, rejects = [], {}, []
    done_records = _done_records(out, plan)
    for track in plan.tracks:
        done = done_records[track.id]
        if done is None:
            raise VRDataError(out, f"track {track.id} has no done-record; rerun build-shards")
        if done["status"] == "rejected":
            rejects.append(done["reject"])
        else:
            records.append(done["track"])
            shards.update((shard["path"], shard) for shard in done["wds"])  # a pack's tars once
    shards = list(shards.values())
    samples: dict[str, int] = {}
    for shard in shards:
        samples[shard["role"]] = samples.get(shard["role"], 0) + shard["samples"]
    index = {"format": "vr-wds-index", "version": 1, "segment_frames": plan.geometry.segment_frames,
             "samples": samples, "bytes": sum(s["bytes"] for s in shards), "shards": shards}
    remote.write_lines(out / TRACKS_JSONL, records)
    remote.write_json(out / WDS_DIR / WDS_INDEX, index)
    remote.write_lines(out / REJECTS_JSONL, rejects)
    remote.write_json(out / STORE_JSON, _store_meta(plan, complete=True).to_json())


def _sizes(out: remote.Location) -> tuple[int, int]:
    """Bytes stored under `zarr/` and under `wds/`."""
    return sum(remote.list_sizes(out / ZARR_DIR).values()), sum(remote.list_sizes(out / WDS_DIR).values())


# ---------------------------------------------------------------------------- one track (a task)


def build_track(task: TrackTask) -> TrackOutcome:
    """Decode, transform, encode and write one track; its done-record is written last.

    Runs on a worker. Holds the decoded track plus one shard of work at a time. A VRDataError
    from the inputs makes a reject (recorded like a finished track); any other error is a bug
    and propagates.
    """
    track = task.track
    stats: dict = {"decode": 0.0, "stft": 0.0, "encode": 0.0, "zarr": 0.0, "wds": 0.0}
    if task.options.measure_memory:
        _reset_peak_rss()
        stats["rss_start_kb"] = _status_kb("VmRSS")
    try:
        begin = time.perf_counter()
        audio = _decode_sources(task)
        stats["decode"] = time.perf_counter() - begin
        record, shards = _write_track(task, audio, stats)
    except VRDataError as error:
        if error.code == UNWRITABLE:
            raise
        reason = _reason(error)
        if error.code in TRANSIENT_CODES:
            # No done-record: the store stays incomplete and a rerun retries this track.
            return TrackOutcome(track.id, track.role, "failed", track.duration, stats=stats, reason=reason)
        reject = _reject(task, error)
        remote.write_json(_done_path(remote.location(task.store), track.id), {"status": "rejected", "reject": reject.to_json()})
        return TrackOutcome(track.id, track.role, "rejected", track.duration, reject=reject, stats=stats)
    except (OSError, ValueError, RuntimeError) as error:
        problem = _write_failure(error)
        if problem is None:
            raise  # not a file-system refusal: a bug
        raise VRDataError(task.store, f"cannot write the store ({problem})", UNWRITABLE) from None
    del audio
    done = {"status": "built", "track": record.to_json(), "wds": [shard.to_json() for shard in shards]}
    remote.write_json(_done_path(remote.location(task.store), track.id), done)
    if task.options.measure_memory:
        stats["peak_rss_kb"] = _status_kb("VmHWM")
    return TrackOutcome(track.id, track.role, "built", record.duration, record=record, shards=shards, stats=stats)


def _reason(error: VRDataError) -> str:
    return error.reason if error.path is None else f"{Path(error.path).name}: {error.reason}"


def _reject(task: TrackTask, error: VRDataError) -> BuildReject:
    track = task.track
    return BuildReject(id=track.id, role=track.role, library=track.library, manifest=task.manifest_path,
                       paths=tuple(entry.path for entry in task.item.files.values()), code=error.code,
                       reason=_reason(error), duration=track.duration)


def _units(tasks: list[TrackTask]) -> list[tuple[TrackTask, ...]]:
    """The build tasks: each track alone, a pack's tracks together; in plan order."""
    units: dict[str, list[TrackTask]] = {}
    for task in tasks:
        units.setdefault(task.track.task_key, []).append(task)
    return [tuple(unit) for unit in units.values()]


def build_unit(tasks: tuple[TrackTask, ...]) -> list[TrackOutcome]:
    """Build one task of `_units`: a track alone (`build_track`) or a pack (`build_pack`)."""
    if tasks[0].track.pack is None:
        return [build_track(tasks[0])]
    return build_pack(tasks)


def build_pack(tasks: tuple[TrackTask, ...]) -> list[TrackOutcome]:
    """Decode, transform and encode a pack's short tracks into its one shard, write the shard and
    one tar (part) of all their samples, then the pack's done-record.

    A track the inputs reject is recorded in the pack's done-record and leaves its slot zero; a
    source that cannot be read (transient) leaves the whole pack without a done-record, so a
    rerun rebuilds it. Memory: the shard (one per source) and one decoded track at a time.
    """
    first = tasks[0]
    geometry, config, role, pack = first.geometry, first.stft, first.track.role, first.track.pack
    pack_start = first.track.start_frame // geometry.shard_frames * geometry.shard_frames
    sources = ROLE_SOURCES[role]
    stats: dict = {"decode": 0.0, "stft": 0.0, "encode": 0.0, "zarr": 0.0, "wds": 0.0}
    if first.options.measure_memory:
        _reset_peak_rss()
        stats["rss_start_kb"] = _status_kb("VmRSS")
    shard = {source: np.zeros((geometry.shard_frames, 2, 2, config.bins), np.float16) for source in sources}
    entries: dict[str, dict] = {}
    outcomes: dict[str, TrackOutcome] = {}
    built: list[tuple[TrackTask, int, int]] = []  # (task, frames, samples)
    for task in tasks:
        track = task.track
        try:
            begin = time.perf_counter()
            audio = _decode_sources(task)
            stats["decode"] += time.perf_counter() - begin
            samples = next(iter(audio.values())).shape[1]
            frames = config.frames_for(samples)
            if frames > track.reserved_frames:
                raise VRDataError(None, f"decodes to {frames} frames, more than the {track.reserved_frames} reserved "
                                        "from the manifest's duration (file changed? rescan)", errors.LENGTH_MISMATCH)
            offset = track.start_frame - pack_start
            for source, signal in audio.items():
                _encode_frames(shard[source][offset:offset + frames], signal, config, task.codec, 0, frames, stats)
            del audio
        except VRDataError as error:
            if error.code == UNWRITABLE:
                raise
            if error.code in TRANSIENT_CODES:
                reason = _reason(error)
                return [TrackOutcome(t.track.id, t.track.role, "failed", t.track.duration, stats=stats,
                                     reason=reason if t is task else f"its pack {pack} has a track that could not "
                                                                     f"be read ({track.id}: {reason})")
                        for t in tasks]
            reject = _reject(task, error)
            entries[track.id] = {"status": "rejected", "reject": reject.to_json()}
            outcomes[track.id] = TrackOutcome(track.id, role, "rejected", track.duration, reject=reject, stats=stats)
            continue
        built.append((task, frames, samples))
    store = remote.location(first.store)
    try:
        begin = time.perf_counter()
        context = default_context(store, {"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 2}})
        writes = [open_array(store / ZARR_DIR / array_name(role, source), context)[
                  pack_start:pack_start + geometry.shard_frames].write(shard[source]) for source in sources]
        for write in writes:
            write.result()
        stats["zarr"] += time.perf_counter() - begin
        begin = time.perf_counter()
        writer = TrackTarWriter(store / WDS_DIR / role, pack, role, pack, geometry.wds_shard_bytes,
                                relative_to=store / WDS_DIR) if geometry.wds else None
        parts: dict[str, list[int]] = {}
        for task, frames, _ in built:
            offset = task.track.start_frame - pack_start
            parts[task.track.id] = []
            segments = _write_segments(writer, task.track, {s: shard[s][offset:offset + frames] for s in sources},
                                       0, frames, 0, geometry, parts[task.track.id]) if writer is not None else 0
            entries[task.track.id] = {"segments": segments}
        shards = writer.close() if writer is not None else []
        stats["wds"] += time.perf_counter() - begin
    except (OSError, ValueError, RuntimeError) as error:
        problem = _write_failure(error)
        if problem is None:
            raise  # not a file-system refusal: a bug
        raise VRDataError(first.store, f"cannot write the store ({problem})", UNWRITABLE) from None
    for task, frames, samples in built:
        track = task.track
        record = TrackRecord(
            id=track.id, role=role, library=track.library, split=track.split, group=track.group, frames=frames,
            duration=round(samples / config.sample_rate, 6), zarr_start=track.start_frame,
            reserved_frames=track.reserved_frames, arrays={source: array_name(role, source) for source in sources},
            wds_shards=tuple(shards[part].path for part in sorted(set(parts[track.id]))),
            segments=entries[track.id]["segments"], manifest=track.manifest, expected_frames=track.expected_frames,
            pack=pack,
        )
        entries[track.id] = {"status": "built", "track": record.to_json()}
        outcomes[track.id] = TrackOutcome(track.id, role, "built", record.duration, record=record,
                                          shards=shards if task is built[0][0] else [], stats=stats)
    done = {"status": "pack", "tracks": entries, "wds": [shard.to_json() for shard in shards]}
    remote.write_json(_done_path(store, pack), done)
    if first.options.measure_memory:
        stats["peak_rss_kb"] = _status_kb("VmHWM")
    return [outcomes[task.track.id] for task in tasks]


def _write_segments(writer: TrackTarWriter, track: PlannedTrack, block: dict[str, np.ndarray], block_start: int,
                    frames: int, segment: int, geometry: Geometry, parts: list[int] | None = None) -> int:
    """Samples of the track's frames `[block_start, block_start + len(block))` (cut at `frames`),
    numbered from `segment`; the last segment of a track holds its valid frames only (stores
    before version 2 zero-padded it). Appends the tar part of each sample to `parts`. Returns
    the next segment number."""
    length = len(next(iter(block.values())))
    for segment_start in range(block_start, min(block_start + length, frames), geometry.segment_frames):
        valid = min(geometry.segment_frames, frames - segment_start)
        local = slice(segment_start - block_start, segment_start - block_start + valid)
        if geometry.wds_compression == "none":
            members = {f"{source}.npy": npy_parts(values[local]) for source, values in block.items()}
        else:
            members = {f"{source}.npy.blosc": [compressed_npy(values[local])] for source, values in block.items()}
        members["json"] = [json.dumps({
            "track": track.id, "role": track.role, "split": track.split, "segment": segment,
            "start_frame": segment_start, "frames": valid, "sources": list(block),
        }, sort_keys=True).encode()]
        writer.add(sample_key(track.id, segment), members)
        if parts is not None:
            parts.append(writer.part)
        segment += 1
    return segment


# What the file system says when it refuses a write, in Python's OSError and in tensorstore's
# error text (tensorstore raises ValueError with the OS message inside).
_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
                   "File too large")


def _write_failure(error: Exception) -> str | None:
    """The reason of a write the file system refused, lower-case, or None for any other error."""
    if isinstance(error, OSError):
        return os_reason(error)
    text = str(error)
    for failure in _WRITE_FAILURES:
        if failure in text:
            return failure[:1].lower() + failure[1:]
    return None


def _decode_sources(task: TrackTask) -> dict[str, np.ndarray]:
    """Each source of the track as float32 `(2, samples)` at the store rate, cut to a common length."""
    manifest = Manifest(library=task.track.library, role=task.track.role, root=Path(task.root), items=[],
                        source_path=Path(task.manifest_path))
    audio = {}
    for source in ROLE_SOURCES[task.track.role]:
        if task.options.verify_hashes:
            _check_hashes(manifest, task.item, source)
        audio[source] = load_item_source(manifest, task.item, source, task.stft.sample_rate, task.options.downmix)
    samples = min(signal.shape[1] for signal in audio.values())
    seconds = samples / task.stft.sample_rate
    if seconds < task.options.min_seconds:
        raise VRDataError(None, f"{seconds:.2f} s is shorter than the minimum {task.options.min_seconds:g} s",
                          errors.TOO_SHORT)
    for source, signal in audio.items():
        peak = max(float(signal[:, :samples].max()), -float(signal[:, :samples].min()))
        reason = silence_reason(peak, task.options.silence_dbfs)
        if reason is not None:
            raise VRDataError(None, f"{source} is {reason}", errors.SILENT)
    return {source: signal[:, :samples] for source, signal in audio.items()}


def _check_hashes(manifest: Manifest, item: Item, source: str) -> None:
    for key in item.sources[source]:
        entry = item.files[key]
        path = manifest.resolve(entry.path)
        if not path.is_file():
            raise VRDataError(entry.path, f"file not found under {manifest.root}", errors.MISSING)
        if file_sha256(path) != entry.sha256:
            raise VRDataError(entry.path, "sha256 differs from the manifest's (file changed; rescan)",
                              errors.HASH_MISMATCH)


def _write_track(task: TrackTask, audio: dict[str, np.ndarray], stats: dict) -> tuple[TrackRecord, list[WdsShard]]:
    """Write the track's reserved shards (all of them, zero past its end) and its tars."""
    track, geometry, config = task.track, task.geometry, task.stft
    samples = next(iter(audio.values())).shape[1]
    frames = config.frames_for(samples)
    if frames > track.reserved_frames:
        raise VRDataError(None, f"decodes to {frames} frames, more than the {track.reserved_frames} reserved from "
                                "the manifest's duration (file changed? rescan)", errors.LENGTH_MISMATCH)
    store = remote.location(task.store)
    names = {source: array_name(track.role, source) for source in audio}
    # One compression thread: a build's parallelism is its worker processes, one per core.
    context = default_context(store, {"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 2}})
    arrays = {source: open_array(store / ZARR_DIR / name, context) for source, name in names.items()}
    writer = TrackTarWriter(store / WDS_DIR / track.role, track.id, track.role, track.id,
                            geometry.wds_shard_bytes, relative_to=store / WDS_DIR) if geometry.wds else None
    segments = 0
    for block_start in range(0, track.reserved_frames, geometry.shard_frames):
        shard = {source: _encoded_shard(signal, config, task.codec, block_start, frames, geometry.shard_frames, stats)
                 for source, signal in audio.items()}
        begin = time.perf_counter()
        first = track.start_frame + block_start
        # One whole shard per write. Waiting for it before the next shard keeps one shard in
        # memory (ours and tensorstore's copy); a worker has one core, so overlap would gain little.
        writes = [arrays[source][first:first + geometry.shard_frames].write(shard[source]) for source in audio]
        for write in writes:
            write.result()
        stats["zarr"] += time.perf_counter() - begin
        if writer is None:
            continue
        begin = time.perf_counter()
        segments = _write_segments(writer, track, shard, block_start, frames, segments, geometry)
        stats["wds"] += time.perf_counter() - begin
    shards = writer.close() if writer is not None else []
    record = TrackRecord(
        id=track.id, role=track.role, library=track.library, split=track.split, group=track.group,
        frames=frames, duration=round(samples / config.sample_rate, 6), zarr_start=track.start_frame,
        reserved_frames=track.reserved_frames, arrays=names, wds_shards=tuple(s.path for s in shards),
        segments=segments, manifest=track.manifest, expected_frames=track.expected_frames,
    )
    return record, shards


def _encoded_shard(audio: np.ndarray, config: StftConfig, codec: CodecConfig, block_start: int, frames: int,
                   shard_frames: int, stats: dict) -> np.ndarray:
    """Float16 `(shard_frames, 2, 2, bins)`: the track's frames `[block_start, ...)`, zeros past its end."""
    shard = np.zeros((shard_frames, 2, 2, config.bins), dtype=np.float16)
    _encode_frames(shard, audio, config, codec, block_start, min(block_start + shard_frames, frames), stats)
    return shard


def _encode_frames(out: np.ndarray, audio: np.ndarray, config: StftConfig, codec: CodecConfig, start: int, stop: int,
                   stats: dict) -> None:
    """Frames `[start, stop)` of `audio`'s STFT, encoded, into `out[:stop - start]` (float16 `(frames, 2, 2, bins)`)."""
    for first in range(start, stop, STFT_BLOCK_FRAMES):
        last = min(first + STFT_BLOCK_FRAMES, stop)
        begin = time.perf_counter()
        spec = block_stft(audio, config, first, last)  # (2, frames, bins) complex64
        stats["stft"] += time.perf_counter() - begin
        begin = time.perf_counter()
        out[first - start:last - start] = encode(spec.transpose(0, 2, 1), codec)
        stats["encode"] += time.perf_counter() - begin


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0), so a task measures its own."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return  # not Linux or not permitted: peaks then include earlier tasks, which only overstates


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (`VmRSS`, `VmHWM` = peak), in kB;
    0 where /proc is not available."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


__all__ = ["DEFAULT_CODEC", "BuildOptions", "BuildResult", "DryRun", "TrackOutcome", "build_pack", "build_store",
           "build_track", "build_unit", "existing_configs", "finalise_store", "plan_store"]
