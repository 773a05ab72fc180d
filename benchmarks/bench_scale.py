"""Scale benchmark: what a store pays per track, and the 83-day library on paper.

    python benchmarks/bench_scale.py [--long 40] [--long-seconds 20] [--cut 10] [--workers 2]
    python benchmarks/bench_scale.py --only tracks        # the per-track table alone
    python benchmarks/bench_scale.py --only days [--days-tracks 30000]   # the 83-day figures alone

Per-track overhead: the same audio as `--long` tracks of `--long-seconds` and as `--cut` times
as many tracks of a `--cut`th of the length (each long track cut into pieces; synthetic music,
44.1 kHz stereo WAV, instrumentals layout). For both: `vrdata scan` (`vr_data.catalog.scan`)
time, `build_store` time (default STFT and codec, WebDataset tars on), bytes of `zarr/` and of
`wds/`, and the number of files in the store; then the short/long ratios. Scan and build run
on a process pool of `--workers` (spawned) processes, like `--workers` of the CLI.

At 83 days (`--only days`): a synthetic manifest of `--days-tracks` tracks adding up to 83 days
(durations drawn around the mean, fake headers: the audio does not exist), then
- `plan_store` (`build-shards --dry-run`'s planning, without the codec sample that needs audio),
- a store of that shape (`tracks.jsonl`, `store.json`, empty arrays of the planned sizes:
  tensorstore writes no chunk for them) opened by the mixer: the epoch plan, and one epoch plan
  in each of `--plan-workers` spawned processes (what DataLoader workers each compute),
- `vrdata stats`'s store part (`vr_data.stats.store_report`) over it,
each with its wall time and the peak RSS (VmHWM) of the process that did it, at a tenth, a
third and all of the tracks, so the growth with tracks is visible (linear: time per track
stays flat). The extrapolated build time per core uses the audio-seconds per CPU-second that the
per-track part measured for long tracks.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vr_data.audio import write_audio  # noqa: E402
from vr_data.catalog.manifest import read_manifest, write_manifest  # noqa: E402
from vr_data.catalog.scan import ScanOptions, scan  # noqa: E402
from vr_data.store.build import build_store  # noqa: E402
from vr_data.testing.synth import music_like  # noqa: E402

RATE = 44100


def write_cut_corpora(directory: Path, long_tracks: int, seconds: float, cut: int) -> tuple[Path, Path]:
    """`long_tracks` tracks of `seconds`, and the same audio cut into `cut` pieces per track."""
    long_root, short_root = directory / "long", directory / "short"
    piece = int(seconds * RATE) // cut
    for index in range(long_tracks):
        audio = music_like(seconds, RATE, index, "mix")
        write_audio(long_root / f"track_{index:05d}.wav", audio, RATE)
        for part in range(cut):
            write_audio(short_root / f"track_{index:05d}_{part:02d}.wav", audio[:, part * piece:(part + 1) * piece], RATE)
    return long_root, short_root


def _files_and_bytes(directory: Path) -> tuple[int, int]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _task_seconds(built) -> float:
    """Seconds the build's tasks spent working (decode, STFT, encode, writes), summed over tasks:
    worker time, which on a loaded machine includes waiting for a core (an upper bound on CPU)."""
    stages = ("decode", "stft", "encode", "zarr", "wds")
    seen, total = set(), 0.0
    for outcome in built.outcomes:
        if id(outcome.stats) not in seen:  # a pack's tracks share their task's stats
            seen.add(id(outcome.stats))
            total += sum(outcome.stats.get(stage, 0.0) for stage in stages)
    return total


def measure_layout(root: Path, work: Path, executor, turn: int) -> dict:
    """Scan `root`, build a store from it (turn `turn`); times, bytes and file counts."""
    started = time.perf_counter()
    result = scan(root, ScanOptions(layout="instrumentals", valid_fraction=0.0, min_seconds=0.5), executor)
    scan_seconds = time.perf_counter() - started
    manifest = read_manifest(write_manifest(work / f"{root.name}-{turn}.jsonl", result.manifest))
    out = work / f"store-{root.name}-{turn}"
    started = time.perf_counter()
    built = build_store([manifest], out, executor=executor)
    build_seconds = time.perf_counter() - started
    files, _ = _files_and_bytes(out)
    return {"tracks": len(manifest.items), "built": built.count("built"), "scan": scan_seconds,
            "build": build_seconds, "zarr": built.zarr_bytes, "wds": built.wds_bytes, "files": files,
            "audio_seconds": built.seconds("built"), "task_seconds": _task_seconds(built)}


def per_track_section(args) -> dict:
    context = multiprocessing.get_context("spawn")  # tensorstore forbids fork() after use
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as temporary, \
            ProcessPoolExecutor(args.workers, mp_context=context) as executor:
        work = Path(temporary)
        long_root, short_root = write_cut_corpora(work / "audio", args.long, args.long_seconds, args.cut)
        list(executor.map(abs, range(args.workers)))  # workers started before the clocks run
        # Turns alternate (long, short, long, short...) so load from other jobs falls on both;
        # the fastest turn of each counts.
        turns: dict[str, list[dict]] = {"long": [], "short": []}
        for turn in range(args.turns):
            for name, root in (("long", long_root), ("short", short_root)):
                turns[name].append(measure_layout(root, work, executor, turn))
        long, short = ({**runs[0], **{key: min(run[key] for run in runs) for key in ("scan", "build", "task_seconds")}}
                       for runs in (turns["long"], turns["short"]))
    short_seconds = args.long_seconds / args.cut
    head_long = f"{long['tracks']} x {args.long_seconds:g} s"
    head_short = f"{short['tracks']} x {short_seconds:g} s"
    print(f"\nper-track overhead: {long['audio_seconds']:.0f} s of audio both ways, {args.workers} worker processes, "
          f"{os.cpu_count()} cores, fastest of {args.turns} alternating turns, load average {os.getloadavg()[0]:.1f}")
    print(f"| | {head_long} | {head_short} | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for label, key, unit in (("scan", "scan", "s"), ("build-shards", "build", "s"), ("Zarr bytes", "zarr", "MB"),
                             ("WebDataset bytes", "wds", "MB"), ("files in the store", "files", "")):
        scale = 1e6 if unit == "MB" else 1
        fmt = (lambda v: f"{v / scale:,.1f} {unit}") if unit else (lambda v: f"{v:,d}")
        print(f"| {label} | {fmt(long[key])} | {fmt(short[key])} | {short[key] / max(long[key], 1e-9):.2f}x |")
    print(f"| files per track | {long['files'] / long['tracks']:.2f} | {short['files'] / short['tracks']:.2f} | |")
    print(f"| task seconds per audio-second | {long['task_seconds'] / long['audio_seconds']:.4f} | "
          f"{short['task_seconds'] / short['audio_seconds']:.4f} | "
          f"{short['task_seconds'] / max(long['task_seconds'], 1e-9):.2f}x |")
    if long["built"] != long["tracks"] or short["built"] != short["tracks"]:
        print(f"(built {long['built']} of {long['tracks']} long and {short['built']} of {short['tracks']} short tracks)")
    return long


# -- 83 days --------------------------------------------------------------------------------------

def synthetic_manifest(directory: Path, tracks: int, days: float, seed: int = 0) -> Path:
    """A pretraining manifest of `tracks` items adding up to `days` of 44.1 kHz stereo audio, with
    durations drawn lognormally around the mean (sigma 0.5, at least 5 s); the headers are made
    up and the files do not exist (the root is an empty folder)."""
    from vr_data.catalog.manifest import FileEntry, Item, Manifest

    rng = np.random.default_rng(seed)
    mean = days * 86400 / tracks
    durations = np.maximum(rng.lognormal(np.log(mean) - 0.125, 0.5, tracks), 5.0)
    durations *= days * 86400 / durations.sum()
    items = []
    for index, seconds in enumerate(durations):
        name = f"song{index:06d}"
        entry = FileEntry(path=f"{name}.flac", sha256=f"{index:064x}", size=int(seconds * 44100 * 2),
                          mtime_ns=0, sample_rate=44100, channels=2, samples=int(seconds * 44100), format="FLAC")
        items.append(Item(id=name, role="pretrain", files={"audio": entry}, sources={"audio": ["audio"]}))
    root = directory / "audio"
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(library="library83", role="pretrain", root=root, items=items, layout="pretrain")
    return write_manifest(directory / f"pretrain-{tracks}.jsonl", manifest)


def write_store_shape(manifest_path: Path, out: Path) -> Path:
    """A complete store of the manifest's shape with no audio in it: the plan's `tracks.jsonl`
    (frames as the headers predict), `store.json` and the planned arrays, empty (tensorstore
    writes no chunk until one is written). Zarr-only, so nothing points at missing tars."""
    from vr_data.io import atomic_write_json, atomic_write_lines
    from vr_data import __version__
    from vr_data.store.arrays import ensure_array, write_group
    from vr_data.store.build import DEFAULT_CODEC
    from vr_data.store.format import ROLE_SOURCES, StoreMeta, TrackRecord, array_name
    from vr_data.store.plan import Geometry, new_plan
    from vr_data.dsp.stft import StftConfig

    plan = new_plan(StftConfig(), DEFAULT_CODEC, Geometry(wds=False))
    plan.extend([read_manifest(manifest_path)])
    records = []
    for track in plan.tracks:
        arrays = {source: array_name(track.role, source) for source in ROLE_SOURCES[track.role]}
        records.append(TrackRecord(
            id=track.id, role=track.role, library=track.library, split=track.split, group=track.group,
            frames=track.expected_frames, duration=track.duration, zarr_start=track.start_frame,
            reserved_frames=track.reserved_frames, arrays=arrays, wds_shards=(), segments=0,
            manifest=track.manifest, expected_frames=track.expected_frames, pack=track.pack).to_json())
    write_group(out / "zarr")
    arrays = {}
    for name, frames in plan.frames_by_array().items():
        ensure_array(out / "zarr" / name, frames, plan.stft.bins, plan.geometry.chunk_frames,
                     plan.geometry.shard_frames, plan.codec)
        arrays[name] = {"shape": [frames, 2, 2, plan.stft.bins], "chunk_frames": plan.geometry.chunk_frames,
                        "shard_frames": plan.geometry.shard_frames}
    atomic_write_lines(out / "tracks.jsonl", records)
    atomic_write_lines(out / "rejects.jsonl", [])
    meta = StoreMeta(complete=True, stft=plan.stft.to_dict(), codec=plan.codec.to_dict(),
                     geometry=plan.geometry.to_dict(), manifests=[ref.to_json() for ref in plan.manifests],
                     arrays=arrays, package_version=__version__, created=plan.created)
    atomic_write_json(out / "store.json", meta.to_json())
    return out


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def timed_job(job: str, path: str) -> dict:
    """Run one 83-day job in this (fresh) process: its wall seconds, the RSS before it (imports
    done) and the peak RSS during it, in MB."""
    from vr_data.mixer import MixerConfig, ZarrMixerDataset
    from vr_data.stats.report import describe_store
    from vr_data.stats.settings import StatsSettings
    from vr_data.store.build import plan_store

    _reset_peak()
    before = _rss_kb()
    started = time.perf_counter()
    if job == "dry-run":
        manifest = read_manifest(path)
        dry = plan_store([manifest], Path(path).parent / "never-built", sample_tracks=0)
        detail = f"{len(dry.to_build)} tracks, {dry.frames:,} frames"
    elif job == "epoch plan":
        config = MixerConfig(crop_frames=256, batch_size=16, proportions={"pretrain": 1.0})
        dataset = ZarrMixerDataset(path, config)
        plan = dataset.plan(0)
        detail = f"{len(plan.kinds):,} examples per epoch"
    elif job == "stats":
        from vr_data.stats.report import _SILENT_PROGRESS

        section = describe_store(Path(path), StatsSettings(), False, None, _SILENT_PROGRESS, False)
        detail = f"{sum(row['items'] for row in section['libraries']):,} tracks in its totals"
    else:
        raise ValueError(job)
    seconds = time.perf_counter() - started
    return {"job": job, "seconds": seconds, "base_mb": before / 1024, "peak_mb": _peak_kb() / 1024, "detail": detail}


def days_section(args, long: dict | None) -> None:
    context = multiprocessing.get_context("spawn")
    counts = sorted({max(1, args.days_tracks // 10), max(1, args.days_tracks // 3), args.days_tracks})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_days_") as temporary:
        work = Path(temporary)
        for count in counts:
            days = args.days * count / args.days_tracks  # the same mean duration at every size
            manifest = synthetic_manifest(work / f"m{count}", count, days)
            store = write_store_shape(manifest, work / f"store{count}")
            with ProcessPoolExecutor(1, mp_context=context) as one:
                for job, path in (("dry-run", manifest), ("epoch plan", store), ("stats", store)):
                    rows.append((count, one.submit(timed_job, job, str(path)).result()))
            # One epoch plan in each of `--plan-workers` processes at once, as DataLoader workers do.
            with ProcessPoolExecutor(args.plan_workers, mp_context=context) as pool:
                results = [future.result() for future in
                           [pool.submit(timed_job, "epoch plan", str(store)) for _ in range(args.plan_workers)]]
            worst = max(results, key=lambda r: r["seconds"])
            rows.append((count, {**worst, "job": f"epoch plan, each of {args.plan_workers} workers (slowest)",
                                 "peak_mb": worst["base_mb"] + max(r["peak_mb"] - r["base_mb"] for r in results)}))
    print(f"\nat {args.days:g} days: {args.days_tracks:,} tracks (mean {args.days * 86400 / args.days_tracks:.0f} s, "
          f"fake headers), default STFT; each job in a fresh process; load average {os.getloadavg()[0]:.1f}")
    print("(RSS MB: the process with its imports, before the job; added MB: its peak RSS minus that)")
    print(f"{'tracks':>7} {'job':<44} {'s':>7} {'ms/1k tracks':>12} {'RSS MB':>7} {'added MB':>8}  what")
    for count, row in rows:
        print(f"{count:>7,} {row['job']:<44} {row['seconds']:>7.2f} {1e6 * row['seconds'] / count:>12.1f} "
              f"{row['base_mb']:>7.0f} {row['peak_mb'] - row['base_mb']:>8.1f}  {row['detail']}")
    if long is not None:
        audio = args.days * 86400
        per_core = long["task_seconds"] / long["audio_seconds"]
        print(f"\nbuild, extrapolated from the long tracks above ({per_core:.4f} task-seconds per audio-second, "
              f"an upper bound on a loaded machine): {audio * per_core / 3600:,.0f} core-hours for {args.days:g} "
              f"days, {audio * per_core / 3600 / 16:,.1f} h on 16 cores, {audio * per_core / 3600 / 64:,.1f} h on 64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", type=int, default=40, help="long tracks")
    parser.add_argument("--long-seconds", type=float, default=20.0)
    parser.add_argument("--cut", type=int, default=10, help="short tracks per long track")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--turns", type=int, default=2, help="builds of each layout, alternating")
    parser.add_argument("--only", choices=("tracks", "days"))
    parser.add_argument("--days", type=float, default=83.0)
    parser.add_argument("--days-tracks", type=int, default=30000)
    parser.add_argument("--plan-workers", type=int, default=2)
    args = parser.parse_args()
    long = per_track_section(args) if args.only != "days" else None
    if args.only != "tracks":
        days_section(args, long)


if __name__ == "__main__":
    main()
