"""Build a spectrogram store from manifests: plan, per-track tasks on any Executor, finalise.

`build_store` writes `plan.json` and an incomplete `store.json` first, then runs one task per
track (`build_track`) on the executor: decode -> STFT -> encode -> write the track's own whole
Zarr shards and its own tars -> write a done-record atomically. A rerun (after a crash or a
SIGKILL) skips tracks whose done-record and tars exist and redoes the rest; rewriting a track's
own shards is safe because no other task touches them. Only when every planned track has a
done-record are `tracks.jsonl`, `wds/index.json`, `rejects.jsonl` and finally `store.json` with
`"complete": true` written. A file that fails at build time becomes a reject, never an abort.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorstore as ts

from vr_data import __version__, errors
from vr_data.store.codec import CodecConfig, encode
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import Item, Manifest, file_sha256
from vr_data.catalog.sources import load_item_source
from vr_data.parallel import map_unordered
from vr_data.dsp.stft import StftConfig, block_stft
from vr_data.store.arrays import ensure_array, open_array, write_group
from vr_data.io import atomic_write_json, atomic_write_lines
from vr_data.store.format import (
    BUILD_DIR, DONE_DIR, PLAN_JSON, REJECTS_JSONL, ROLE_SOURCES, STORE_JSON, TRACKS_JSONL, WDS_DIR, WDS_INDEX,
    ZARR_DIR, BuildReject, StoreMeta, TrackRecord, WdsShard, array_name, read_json, read_store_meta,
)
from vr_data.store.plan import BuildPlan, Geometry, PlannedTrack, new_plan, planned_roles
from vr_data.store.wds import TrackTarWriter, compressed_npy, npy_parts, sample_key

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
    status: str                   # "built", "skipped" (done in an earlier run) or "rejected"
    duration: float               # seconds of audio (the manifest's duration for rejects)
    record: TrackRecord | None = None
    reject: BuildReject | None = None
    shards: list[WdsShard] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


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
    out = Path(out)
    plan, added, meta = _load_or_plan(out, manifests, stft, codec, geometry, append)
    # A plan saved by an append that was killed before it marked the store incomplete has
    # tracks without done-records: those still need building.
    if meta is not None and meta.complete and not added and all(_done_path(out, t.id).exists() for t in plan.tracks):
        outcomes = [_skipped(track, _read_done(out, track.id)) for track in plan.tracks]
        return BuildResult(out, outcomes, time.perf_counter() - started, *_sizes(out), already_complete=True)
    out.mkdir(parents=True, exist_ok=True)
    # The plan first (a directory with a plan is a store to resume), then the incomplete mark,
    # before any array or tar changes; until the mark, readers see the previous complete store.
    plan.save(out / PLAN_JSON)
    atomic_write_json(out / STORE_JSON, _store_meta(plan, complete=False).to_json())
    _ensure_arrays(out, plan)
    _remove_temporaries(out)
    by_id = {track_id: (manifest, item) for manifest in manifests for item in manifest.items
             for track_id, _ in planned_roles(item)}
    skipped, tasks = [], []
    for track in plan.tracks:
        done = _read_done(out, track.id)
        if done is not None and _outputs_exist(out, done):
            skipped.append(_skipped(track, done))
        elif track.id not in by_id:
            raise VRDataError(out, f"track {track.id} (library {track.library}) is not finished and its manifest "
                                   "was not given; rerun with the same manifests")
        else:
            manifest, item = by_id[track.id]
            tasks.append(TrackTask(str(out), track, str(manifest.root), str(manifest.source_path), item,
                                   plan.stft, plan.codec, plan.geometry, options))
    if on_start is not None:
        on_start(sum(task.track.duration for task in tasks), skipped)
    outcomes = {outcome.id: outcome for outcome in skipped}
    for _, outcome in map_unordered(build_track, tasks, executor):
        outcomes[outcome.id] = outcome
        if on_track is not None:
            on_track(outcome)
    finalise_store(out, plan)
    ordered = [outcomes[track.id] for track in plan.tracks]
    return BuildResult(out, ordered, time.perf_counter() - started, *_sizes(out))


def existing_configs(out: str | Path) -> tuple[StftConfig, CodecConfig, Geometry] | None:
    """The configs of the store (complete or not) at `out`, or None if there is none yet."""
    path = Path(out) / PLAN_JSON
    if not path.exists():
        return None
    plan = BuildPlan.load(path)
    return plan.stft, plan.codec, plan.geometry


def _load_or_plan(out: Path, manifests: list[Manifest], stft, codec, geometry, append: bool):
    """The plan (existing or new, extended with new items), the new tracks, and store.json if any."""
    plan_path = out / PLAN_JSON
    meta = read_store_meta(out)
    if plan_path.exists():
        plan = BuildPlan.load(plan_path)
        _check_same(out, "STFT config", plan.stft, stft)
        _check_same(out, "codec", plan.codec, codec)
        _check_same(out, "store geometry", plan.geometry, geometry)
        added = plan.extend(manifests)
        if added and not append:
            raise VRDataError(out, f"{len(added)} items of the given manifests are not in this store; "
                                   "pass --append to add them (or build into a new --out)")
        return plan, added, meta
    if out.exists() and any(out.iterdir()):
        raise VRDataError(out, "exists, is not empty and is not a store (no plan.json); choose another --out")
    plan = new_plan(stft or StftConfig(), codec or DEFAULT_CODEC, geometry or Geometry())
    added = plan.extend(manifests)
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


def _ensure_arrays(out: Path, plan: BuildPlan) -> None:
    write_group(out / ZARR_DIR)
    for name, frames in plan.frames_by_array().items():
        ensure_array(out / ZARR_DIR / name, frames, plan.stft.bins, plan.geometry.chunk_frames,
                     plan.geometry.shard_frames, plan.codec)


def _remove_temporaries(out: Path) -> None:
    """Temporary files of killed tasks (`.NAME.tmp-PID`): never read, safe to delete."""
    for directory in (out / WDS_DIR, out / BUILD_DIR):
        if directory.exists():
            for path in directory.rglob(".*.tmp-*"):
                path.unlink(missing_ok=True)


def _done_path(out: Path, track_id: str) -> Path:
    return out / BUILD_DIR / DONE_DIR / f"{track_id}.json"


def _read_done(out: Path, track_id: str) -> dict | None:
    path = _done_path(out, track_id)
    if not path.exists():
        return None
    try:
        return read_json(path)
    except VRDataError:
        return None  # unreadable: rebuild the track


def _outputs_exist(out: Path, done: dict) -> bool:
    if done.get("status") == "rejected":
        return True
    return all((out / WDS_DIR / shard["path"]).is_file() and (out / WDS_DIR / shard["path"]).stat().st_size == shard["bytes"]
               for shard in done.get("wds", []))


def _skipped(track: PlannedTrack, done: dict) -> TrackOutcome:
    if done.get("status") == "rejected":
        reject = BuildReject.from_json(done["reject"])
        return TrackOutcome(track.id, track.role, "rejected", track.duration, reject=reject)
    record = TrackRecord.from_json(done["track"])
    shards = [WdsShard.from_json(shard) for shard in done["wds"]]
    return TrackOutcome(track.id, track.role, "skipped", record.duration, record=record, shards=shards)


def finalise_store(out: Path, plan: BuildPlan) -> None:
    """Write tracks.jsonl, wds/index.json, rejects.jsonl, then store.json `complete: true` last."""
    records, shards, rejects = [], [], []
    for track in plan.tracks:
        done = _read_done(out, track.id)
        if done is None:
            raise VRDataError(out, f"track {track.id} has no done-record; rerun build-shards")
        if done["status"] == "rejected":
            rejects.append(done["reject"])
        else:
            records.append(done["track"])
            shards.extend(done["wds"])
    samples: dict[str, int] = {}
    for shard in shards:
        samples[shard["role"]] = samples.get(shard["role"], 0) + shard["samples"]
    index = {"format": "vr-wds-index", "version": 1, "segment_frames": plan.geometry.segment_frames,
             "samples": samples, "bytes": sum(s["bytes"] for s in shards), "shards": shards}
    atomic_write_lines(out / TRACKS_JSONL, records)
    atomic_write_json(out / WDS_DIR / WDS_INDEX, index)
    atomic_write_lines(out / REJECTS_JSONL, rejects)
    atomic_write_json(out / STORE_JSON, _store_meta(plan, complete=True).to_json())


def _sizes(out: Path) -> tuple[int, int]:
    """Bytes on disk of `zarr/` and of `wds/`."""
    def total(directory: Path) -> int:
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0
    return total(out / ZARR_DIR), total(out / WDS_DIR)


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
        reject = BuildReject(
            id=track.id, role=track.role, library=track.library, manifest=task.manifest_path,
            paths=tuple(entry.path for entry in task.item.files.values()), code=error.code,
            reason=error.reason if error.path is None else f"{Path(error.path).name}: {error.reason}",
            duration=track.duration,
        )
        atomic_write_json(_done_path(Path(task.store), track.id), {"status": "rejected", "reject": reject.to_json()})
        return TrackOutcome(track.id, track.role, "rejected", track.duration, reject=reject, stats=stats)
    del audio
    done = {"status": "built", "track": record.to_json(), "wds": [shard.to_json() for shard in shards]}
    atomic_write_json(_done_path(Path(task.store), track.id), done)
    if task.options.measure_memory:
        stats["peak_rss_kb"] = _status_kb("VmHWM")
    return TrackOutcome(track.id, track.role, "built", record.duration, record=record, shards=shards, stats=stats)


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
    threshold = 10.0 ** (task.options.silence_dbfs / 20.0)
    for source, signal in audio.items():
        if max(float(signal[:, :samples].max()), -float(signal[:, :samples].min())) <= threshold:
            raise VRDataError(None, f"{source} is silent (peak <= {task.options.silence_dbfs:g} dBFS)", errors.SILENT)
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
    store = Path(task.store)
    names = {source: array_name(track.role, source) for source in audio}
    # One compression thread: a build's parallelism is its worker processes, one per core.
    context = ts.Context({"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 2}})
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
        for segment_start in range(block_start, min(block_start + geometry.shard_frames, frames),
                                   geometry.segment_frames):
            valid = min(geometry.segment_frames, frames - segment_start)
            local = slice(segment_start - block_start, segment_start - block_start + geometry.segment_frames)
            if geometry.wds_compression == "none":
                members = {f"{source}.npy": npy_parts(shard[source][local]) for source in audio}
            else:
                members = {f"{source}.npy.blosc": [compressed_npy(shard[source][local])] for source in audio}
            members["json"] = [json.dumps({
                "track": track.id, "role": track.role, "split": track.split, "segment": segments,
                "start_frame": segment_start, "frames": valid, "sources": list(audio),
            }, sort_keys=True).encode()]
            writer.add(sample_key(track.id, segments), members)
            segments += 1
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
    stop = min(block_start + shard_frames, frames)
    for first in range(block_start, stop, STFT_BLOCK_FRAMES):
        last = min(first + STFT_BLOCK_FRAMES, stop)
        begin = time.perf_counter()
        spec = block_stft(audio, config, first, last)  # (2, frames, bins) complex64
        stats["stft"] += time.perf_counter() - begin
        begin = time.perf_counter()
        shard[first - block_start:last - block_start] = encode(spec.transpose(0, 2, 1), codec)
        stats["encode"] += time.perf_counter() - begin
    return shard


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


__all__ = ["DEFAULT_CODEC", "BuildOptions", "BuildResult", "TrackOutcome", "build_store", "build_track",
           "existing_configs", "finalise_store"]
