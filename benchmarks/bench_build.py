"""build-shards benchmark: throughput, storage, round-trip SNR and worker memory vs the classic cache.

Usage:
    python benchmarks/bench_build.py                    # 16 tracks x 30 s (8 min), then two memory probes
    python benchmarks/bench_build.py --seconds 60 --tracks 6 --workers 2 --keep /tmp/bench

Writes a corpus of music-like tracks (vr_data.testing.demo: instrumental + vocal) as ogg/mp3/flac/wav at
22.05/32/44.1/48 kHz, scans it, then in the same run measures:
  (a) the classic vocal-remover cache, one process: librosa.load(sr=44100, res_type="kaiser_fast"),
      librosa.stft per channel (n_fft 2048, hop 1024), np.save of complex64;
  (b) `build_store` in this process (pinned to one core, as (a) is), and on a dask LocalCluster of
      `--workers` single-threaded processes (the cluster's start-up is timed separately).
Printed: audio-seconds per second and ratios, GB per stereo audio-hour (Zarr bytes on disk vs the
.npy bytes), min/median round-trip SNR (audio -> store -> istft vs the audio decoded and resampled
to 44.1 kHz by vr_data.audio), seconds per build stage, and each task's peak RSS on its worker
(VmHWM, reset per task) for a short and a 4x longer probe track (flac 44.1 kHz, built separately).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.common import dask_executor  # noqa: E402
from vr_data.audio import load_audio, write_audio  # noqa: E402
from vr_data.store.plan import Geometry  # noqa: E402
from vr_data.store.build import BuildOptions, build_store  # noqa: E402
from vr_data.testing.demo import instrumental_track, vocal_track  # noqa: E402
from vr_data.catalog.manifest import read_manifest, write_manifest  # noqa: E402
from vr_data.dsp.metrics import snr_db  # noqa: E402
from vr_data.catalog.scan import ScanOptions, scan  # noqa: E402
from vr_data.dsp.stft import istft  # noqa: E402
from vr_data.store import open_store  # noqa: E402

FORMATS = [("ogg", 48000), ("mp3", 44100), ("flac", 22050), ("wav", 32000),
           ("ogg", 44100), ("mp3", 48000), ("flac", 32000), ("wav", 22050)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each corpus track")
    parser.add_argument("--tracks", type=int, default=16, help="corpus tracks (formats and rates cycle)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method; the fastest counts "
                        "(the machine is shared, so slower runs measure other processes)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--no-wds", action="store_true", help="build Zarr-only stores (no WebDataset tars)")
    parser.add_argument("--wds-compression", default="none", help="WebDataset members: none or blosc-lz4")
    args = parser.parse_args()
    global GEOMETRY
    GEOMETRY = Geometry(wds=not args.no_wds, wds_compression=args.wds_compression)
    with tempfile.TemporaryDirectory(prefix="bench_build_") as scratch:
        run(args, args.keep or Path(scratch))


def run(args, work: Path) -> None:
    print(f"synthesising {args.tracks} x {args.seconds:g} s in {work}")
    for index in range(args.tracks):
        extension, rate = FORMATS[index % len(FORMATS)]
        _write_song(work / "corpus" / f"song_{index:02d}.{extension}", args.seconds, rate, seed=index)
    # Memory probes: the same format, one track 4x as long as the other.
    _write_song(work / "probes" / "probe_short.flac", args.seconds, 44100, seed=100)
    _write_song(work / "probes" / "probe_long.flac", 4 * args.seconds, 44100, seed=101)
    manifest = _scanned(work / "corpus", work / "corpus.jsonl")
    probes = _scanned(work / "probes", work / "probes.jsonl")
    files = [manifest.resolve(item.files["audio"].path) for item in manifest.items]
    seconds = sum(item.duration for item in manifest.items)
    hours = seconds / 3600
    print(f"{len(files)} files ({', '.join(sorted({f'{p.suffix[1:]}' for p in files}))}), "
          f"{seconds / 60:.1f} min of audio\n")

    load_before = _load()
    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cores)})  # one core for the single-process measurements
    baseline_time, baseline_bytes = _fastest(classic_cache(files, work / f"classic_{run}") for run in range(args.repeats))
    single_time, single = _fastest(_timed_build(manifest, work / f"store_1_{run}", None) for run in range(args.repeats))
    os.sched_setaffinity(0, all_cores)

    started = time.perf_counter()
    with dask_executor(args.workers, None) as executor:
        cluster_start = time.perf_counter() - started
        # The probes go first: they also warm the workers up (imports, FFT plans), as the first
        # minutes of a long build would, so the timed build measures the steady state.
        memory = build_store([probes], work / "store_probes", executor=executor,
                             options=BuildOptions(measure_memory=True))
        # One untimed build of the corpus, so every worker has run every stage (numba cache
        # loads, FFT plans, codec tables) before the timed runs.
        build_store([manifest], work / "store_warm", executor=executor, geometry=GEOMETRY)
        parallel_time, parallel = _fastest(_timed_build(manifest, work / f"store_n_{run}", executor)
                                           for run in range(args.repeats))

    print(f"load average before/after the measurements: {load_before} / {_load()} "
          f"(the machine is shared: other processes slow every figure)")
    store = open_store(parallel.store)
    snrs = _round_trip_snrs(store, manifest)
    print("throughput (audio-seconds per second of wall time)")
    print(f"  classic cache, 1 process (librosa kaiser_fast + stft + np.save): {seconds / baseline_time:7.1f}")
    print(f"  build-shards, in-process, 1 core:                               {seconds / single_time:7.1f}"
          f"   {baseline_time / single_time:4.1f}x classic")
    print(f"  build-shards, LocalCluster of {args.workers} workers:                       "
          f"{seconds / parallel_time:7.1f}   {baseline_time / parallel_time:4.1f}x classic"
          f"   (cluster start-up {cluster_start:.1f} s, not included)")
    print("storage (GB per stereo audio-hour)")
    print(f"  classic complex64 .npy:              {baseline_bytes / 1e9 / hours:6.3f}")
    print(f"  store zarr/ ({_codec_name(store.codec)}): {parallel.zarr_bytes / 1e9 / hours:6.3f}")
    print(f"  store wds/ (members: {GEOMETRY.wds_compression}):        {parallel.wds_bytes / 1e9 / hours:6.3f}")
    print(f"round-trip SNR over {len(snrs)} tracks: min {min(snrs):.1f} dB, median {statistics.median(snrs):.1f} dB")
    print(f"(fastest of {args.repeats} runs each)")
    _print_stages("in-process, 1 core", single, single_time)
    _print_stages(f"LocalCluster of {args.workers}", parallel, parallel_time)
    _print_memory(memory, probes)


GEOMETRY = Geometry()  # --no-wds: Geometry(wds=False)


def _timed_build(manifest, out: Path, executor) -> tuple[float, object]:
    started = time.perf_counter()
    result = build_store([manifest], out, executor=executor, geometry=GEOMETRY)
    return time.perf_counter() - started, result


def _fastest(runs):
    """The (seconds, result) pair of the fastest run."""
    return min(runs, key=lambda run: run[0])


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _scanned(root: Path, path: Path):
    return read_manifest(write_manifest(path, scan(root, ScanOptions(layout="pretrain", valid_fraction=0.0)).manifest))


def _codec_name(codec) -> str:
    return f"{codec.name}, {codec.compressor} level {codec.level}"


def _write_song(path: Path, seconds: float, rate: int, seed: int) -> None:
    song = instrumental_track(seconds, rate, seed) + vocal_track(seconds, rate, seed)
    write_audio(path, np.clip(song, -1, 1), rate)


def classic_cache(files: list[Path], out: Path) -> tuple[float, int]:
    """The ad-hoc cache vocal-remover scripts build; returns (seconds taken, bytes written)."""
    import librosa

    out.mkdir(parents=True, exist_ok=True)
    warm = out / "warm.wav"  # resampy compiles with numba on first use: keep that out of the timing
    write_audio(warm, np.zeros((2, 4800), np.float32), 48000)
    librosa.load(str(warm), sr=44100, mono=False, res_type="kaiser_fast")
    warm.unlink()
    started = time.perf_counter()
    for index, path in enumerate(files):
        wave, _ = librosa.load(str(path), sr=44100, mono=False, dtype=np.float32, res_type="kaiser_fast")
        wave = np.atleast_2d(wave)
        if wave.shape[0] == 1:
            wave = np.repeat(wave, 2, axis=0)
        spec = np.stack([librosa.stft(channel, n_fft=2048, hop_length=1024) for channel in wave])
        np.save(out / f"{index:04d}.npy", spec.astype(np.complex64))
    elapsed = time.perf_counter() - started
    return elapsed, sum(p.stat().st_size for p in out.glob("*.npy"))


def _round_trip_snrs(store, manifest) -> list[float]:
    snrs = []
    for track in store.tracks:
        item = next(i for i in manifest.items if i.id == track.id)
        reference = load_audio(manifest.resolve(item.files["audio"].path), store.config.sample_rate, silence_dbfs=None)
        restored = istft(store.read_spectrogram(track, "audio"), store.config, length=reference.shape[1])
        snrs.append(snr_db(reference, restored))
    return snrs


def _print_stages(label: str, result, wall: float) -> None:
    totals: dict[str, float] = {}
    for outcome in result.outcomes:
        for stage, value in outcome.stats.items():
            totals[stage] = totals.get(stage, 0.0) + value
    busy = sum(totals.values()) or 1.0
    parts = ", ".join(f"{stage} {value:.2f} s ({100 * value / busy:.0f}%)" for stage, value in totals.items())
    print(f"task time by stage, {label} (wall {wall:.2f} s): {parts}")


def _print_memory(result, manifest) -> None:
    print("memory per task on its worker (VmRSS at task start, VmHWM peak reset per task)")
    for outcome in sorted(result.outcomes, key=lambda o: o.duration):
        audio_mb = outcome.duration * 44100 * 2 * 4 / 1e6
        start, peak = outcome.stats["rss_start_kb"] / 1e3, outcome.stats["peak_rss_kb"] / 1e3
        print(f"  {outcome.duration:6.1f} s track: decoded audio {audio_mb:6.1f} MB, RSS at start {start:6.1f} MB, "
              f"peak {peak:6.1f} MB, growth {peak - start:6.1f} MB")


if __name__ == "__main__":
    main()
