"""Mixer benchmark: mixed training examples per second, against two baselines, in one run.

Usage:
    python benchmarks/bench_mixer.py [--seconds 45] [--tracks 6] [--batches 60] [--workers 2]

Writes `--tracks` instrumentals and vocals of `--seconds` each (synthetic, 44.1 kHz WAV), builds a
store with the default STFT (n_fft 2048, hop 1024, 1025 bins) and codec, then measures, all in
this run on this machine:

- baselines, each in one process, each warmed up with `--warm-up` untimed examples (librosa's
  first `stft` in a process takes over a second of imports and compilation) before
  `--baseline-examples` timed ones:
  (a) on-the-fly decode + STFT of crops (soundfile read of the crop's samples, soxr resampling
  to 44.1 kHz where needed, librosa.stft per channel as the classic scripts do, complex mix,
  magnitude) from the WAV files, from FLAC copies and from MP3 copies at 48 kHz;
  (b) naive random 256-frame crop reads through zarr-python from the store (`array[start:stop]`),
  decode, complex mix, magnitude;
  (c) the classic cache: each WAV's whole STFT as a complex64 `.npy`, random crops through a
  memory map, complex mix, magnitude;
- the mixer (`ZarrMixerDataset`, augmented mixes only: 2 crops per example) through
  `MixerLoader` with `--workers` DataLoader workers and in-process (0 workers), and the
  WebDataset backend with the same workers, each with fresh output tensors per batch and with
  `reuse_outputs=True`, and the WebDataset backend on a store whose tar members are
  blosc-compressed: examples/s delivered as batches ready for the model (crop 256 frames,
  stereo, 1025 bins, float32 magnitudes, crop-max normalised);
- what the integrity checks and the crop variety cost, in the same run: the Zarr backend with
  vocal offsets on the chunk grid (`vocal_offset_step=256`, one chunk decoded per vocal crop,
  the old default) against any frame (the default: usually two chunks), and both backends on a
  copy of the store without checksums (Zarr chunks without crc32c, tar members without their
  checksum headers, as stores built before them); plus single-process reads of 256-frame vocal
  crops (chunk-aligned and unaligned starts, with and without chunk checksums) in CPU ms per crop;
- the CPU time per example of every path (this process and its workers): on a shared machine the
  rates move with the other jobs, the CPU cost much less; `(a)/CPU` is baseline (a) from WAV's
  CPU time per example over the path's;
- the peak RSS (VmHWM) of each DataLoader worker process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vr_data.audio import write_audio  # noqa: E402
from vr_data.store.build import build_store  # noqa: E402
from vr_data.catalog.manifest import read_manifest, write_manifest  # noqa: E402
from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset  # noqa: E402
from vr_data.mixer.wds_backend import WdsMixerDataset  # noqa: E402
from vr_data.catalog.scan import ScanOptions, scan  # noqa: E402
from vr_data.store.plan import Geometry  # noqa: E402
from vr_data.testing.synth import music_like  # noqa: E402

CROP = 256
HOP = 1024
N_FFT = 2048


def write_corpus(directory: Path, tracks: int, seconds: float) -> dict[str, Path]:
    roots = {"instrumentals": directory / "instrumentals", "vocals": directory / "vocals"}
    for index in range(tracks):
        write_audio(roots["instrumentals"] / f"inst_{index:02d}.wav", music_like(seconds, 44100, index, "mix"), 44100)
        write_audio(roots["vocals"] / f"vocal_{index:02d}.wav", music_like(seconds, 44100, 100 + index, "sparse"), 44100)
    return roots


def write_encoded_copies(roots: dict[str, Path], directory: Path) -> dict[str, dict[str, list[Path]]]:
    """The corpus as users keep it: per format (`wav` 44.1 kHz, `flac` 44.1 kHz, `mp3` resampled
    to 48 kHz, libsndfile's default bitrate) the instrumental and vocal files."""
    import soxr
    import soundfile as sf

    files: dict[str, dict[str, list[Path]]] = {"wav": {}, "flac": {}, "mp3": {}}
    for role, root in roots.items():
        wavs = sorted(root.glob("*.wav"))
        files["wav"][role] = wavs
        files["flac"][role], files["mp3"][role] = [], []
        for wav in wavs:
            audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
            flac = directory / "flac" / role / (wav.stem + ".flac")
            mp3 = directory / "mp3" / role / (wav.stem + ".mp3")
            write_audio(flac, audio.T, rate)
            write_audio(mp3, soxr.resample(audio, rate, 48000).T, 48000)
            files["flac"][role].append(flac)
            files["mp3"][role].append(mp3)
    return files


def _timed(one_example, examples: int, warm_up: int) -> tuple[float, float]:
    """(examples/s, CPU ms per example) of `one_example()` called `examples` times, after
    `warm_up` untimed calls (imports, librosa's first-call compilation, file caches)."""
    for _ in range(warm_up):
        one_example()
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(examples):
        one_example()
    seconds = time.perf_counter() - started
    return examples / seconds, 1000 * (time.process_time() - cpu_started) / examples


def baseline_on_the_fly(files: dict[str, list[Path]], examples: int, warm_up: int, seed: int = 0) -> tuple[float, float]:
    """(a) decode + STFT per crop from audio files, as the classic scripts do: soundfile reads
    the crop's samples at the file's rate, soxr resamples them to 44.1 kHz where the file is at
    another rate, librosa.stft per channel, complex mix, magnitude, crop-max normalised; one
    process. Returns (examples/s, CPU ms per example)."""
    import librosa
    import soundfile as sf
    import soxr

    rng = np.random.default_rng(seed)
    samples = (CROP - 1) * HOP  # at 44.1 kHz
    lengths = {path: (sf.info(str(path)).frames, sf.info(str(path)).samplerate) for role in files for path in files[role]}

    def crop(path: Path) -> np.ndarray:
        frames, rate = lengths[path]
        needed = -(-samples * rate // 44100)
        start = int(rng.integers(0, frames - needed))
        audio, _ = sf.read(str(path), start=start, frames=needed, dtype="float32", always_2d=True)
        if rate != 44100:
            audio = soxr.resample(audio, rate, 44100)[:samples]
        return np.stack([librosa.stft(np.ascontiguousarray(audio[:, c]), n_fft=N_FFT, hop_length=HOP)
                         for c in range(2)])

    def one_example() -> None:
        instrumental = crop(files["instrumentals"][int(rng.integers(0, len(files["instrumentals"])))])
        vocal = crop(files["vocals"][int(rng.integers(0, len(files["vocals"])))])
        magnitude = np.abs(instrumental + 0.7 * vocal)
        magnitude /= magnitude.max()

    return _timed(one_example, examples, warm_up)


def write_npy_cache(files: dict[str, list[Path]], directory: Path) -> dict[str, list[Path]]:
    """The classic spectrogram cache: each file's whole STFT as complex64 `(2, bins, frames)` in a
    `.npy` (8 bytes per bin and frame and channel, four times the store's float16 re/im)."""
    import librosa
    import soundfile as sf

    cache: dict[str, list[Path]] = {}
    for role, paths in files.items():
        cache[role] = []
        for path in paths:
            audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
            spec = np.stack([librosa.stft(np.ascontiguousarray(audio[:, c]), n_fft=N_FFT, hop_length=HOP)
                             for c in range(2)]).astype(np.complex64)
            target = directory / role / (path.stem + ".npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, spec)
            cache[role].append(target)
    return cache


def baseline_npy_cache(cache: dict[str, list[Path]], examples: int, warm_up: int, seed: int = 0) -> tuple[float, float]:
    """(c) random 256-frame crops of the complex64 `.npy` cache (memory-mapped, so a crop reads
    only its frames), complex mix, magnitude, normalised; one process."""
    rng = np.random.default_rng(seed)
    arrays = {role: [np.load(path, mmap_mode="r") for path in paths] for role, paths in cache.items()}

    def crop(role: str) -> np.ndarray:
        spec = arrays[role][int(rng.integers(0, len(arrays[role])))]
        start = int(rng.integers(0, spec.shape[2] - CROP))
        return np.array(spec[:, :, start:start + CROP])

    def one_example() -> None:
        magnitude = np.abs(crop("instrumentals") + 0.7 * crop("vocals"))
        magnitude /= magnitude.max()

    return _timed(one_example, examples, warm_up)


def baseline_zarr_python(store: Path, examples: int, warm_up: int, seed: int = 0) -> tuple[float, float]:
    """(b) naive random crop reads through zarr-python; returns (examples/s, CPU ms per example), one process."""
    import zarr

    from vr_data.store.codec import decode

    rng = np.random.default_rng(seed)
    tracks = [json.loads(line) for line in (store / "tracks.jsonl").read_text().splitlines()]
    arrays = {name: zarr.open_array(store / "zarr" / name, mode="r") for name in ("instrumental", "vocal")}
    by_role = {role: [t for t in tracks if t["role"] == role] for role in ("instrumental", "vocal")}

    def one_example() -> None:
        crops = []
        for role in ("instrumental", "vocal"):
            track = by_role[role][int(rng.integers(0, len(by_role[role])))]
            start = track["zarr"]["start"] + int(rng.integers(0, track["frames"] - CROP))
            crops.append(decode(arrays[role][start:start + CROP]))
        magnitude = np.abs(crops[0] + 0.7 * crops[1])
        magnitude /= magnitude.max()

    return _timed(one_example, examples, warm_up)


def without_checksums(store: Path, out: Path) -> Path:
    """A copy of `store` as built before integrity checksums: Zarr chunks without crc32c (zero
    chunks not stored) and tar members without checksum headers. Same values, same samples."""
    import tensorstore as ts

    shutil.copytree(store, out)
    for array_dir in sorted(p for p in (out / "zarr").iterdir() if p.is_dir()):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir)}}
        values = ts.open(spec).result().read().result()
        metadata = json.loads((array_dir / "zarr.json").read_text())
        sharding = metadata["codecs"][0]["configuration"]
        sharding["codecs"] = [codec for codec in sharding["codecs"] if codec["name"] != "crc32c"]
        metadata = {k: v for k, v in metadata.items() if k not in ("zarr_format", "node_type", "attributes")}
        shutil.rmtree(array_dir)
        ts.open({**spec, "metadata": metadata}, create=True).result().write(values).result()
    for tar in sorted((out / "wds").rglob("*.tar")):
        with tarfile.open(tar) as archive:
            members = [(member, archive.extractfile(member).read()) for member in archive]
        with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
            for member, data in members:
                member.pax_headers = {}
                archive.addfile(member, io.BytesIO(data))
    return out


def read_costs(store_path: Path, plain_path: Path, crops: int, seed: int = 0) -> dict[str, float]:
    """CPU ms per 256-frame vocal crop read through `Store.read_many` (batches of 16, one process):
    chunk-aligned starts (one chunk decoded), unaligned starts (two), unaligned without chunk
    checksums. Each pattern is read three times, alternating, and the fastest pass is kept."""
    from vr_data.store import open_store

    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stores = {"with": open_store(store_path, cache_bytes=0), "without": open_store(plain_path, cache_bytes=0)}
    tracks = stores["with"].tracks_by_role("vocal")
    chunk = stores["with"].geometry.chunk_frames
    picks = [(tracks[int(rng.integers(0, len(tracks)))], int(rng.integers(0, 10**9))) for _ in range(crops)]
    aligned = [(t, chunk * (o % ((t.frames - CROP) // chunk + 1))) for t, o in picks]
    unaligned = [(t, 1 + o % (t.frames - CROP - 1)) for t, o in picks]
    patterns = {
        "aligned": ("with", aligned), "unaligned": ("with", unaligned),
        "aligned, no checksums": ("without", aligned), "unaligned, no checksums": ("without", unaligned),
    }
    best = {name: float("inf") for name in patterns}
    for _ in range(3):
        for name, (which, starts) in patterns.items():
            store = stores[which]
            requests = [(t.id, "vocal", start, start + CROP) for t, start in starts]
            began = time.process_time()  # CPU time of all threads: steadier than wall time on a busy machine
            for first in range(0, len(requests), 16):
                store.read_many(requests[first:first + 16])
            best[name] = min(best[name], (time.process_time() - began) * 1000 / len(requests))
    return best


def sampling_costs(store_path: Path, plain_path: Path, batch_size: int, batches: int = 12) -> dict[tuple[str, str], tuple[float, float]]:
    """In-process CPU ms per example (read + silence rule, mix) of the Zarr backend with reused
    outputs: the old sampling (crop cells at phase 0, vocal offsets on the chunk grid) against
    the new (per-epoch phases, any vocal offset), on the store with and without chunk checksums.
    Best of three alternating passes over `batches` batches."""
    import vr_data.mixer.base as mixer_base

    phased = mixer_base.track_phases

    def phase_zero(seed, epoch, salt, tracks, crop_frames):
        return np.zeros(tracks, np.int64)  # the old grid: cells at 0, crop, 2 crop, ...

    base = MixerConfig(crop_frames=CROP, batch_size=batch_size, seed=0, proportions={"augmented": 1.0},
                       examples_per_epoch=batch_size * 400)
    best: dict[tuple[str, str], tuple[float, float]] = {}
    try:
        for _ in range(3):
            for store_name, path in (("checksums", store_path), ("no checksums", plain_path)):
                for sampling in ("old: phase 0, aligned vocals", "new: phases, any offset"):
                    old = sampling.startswith("old")
                    mixer_base.track_phases = phase_zero if old else phased
                    config = MixerConfig(**{**base.to_dict(), "vocal_offset_step": 256 if old else None})
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        dataset = ZarrMixerDataset(path, config)
                    dataset.output_ring = 4
                    buffers, plan = dataset.new_buffers(), dataset.plan(0)
                    dataset.finish_batch(buffers, *dataset.assemble(plan, 0, buffers), 0, 0)  # warm up
                    read = mix = 0.0
                    for k in range(1, batches + 1):
                        began = time.process_time()
                        recipes, indices = dataset.assemble(plan, k, buffers)
                        assembled = time.process_time()
                        dataset.finish_batch(buffers, recipes, indices, 0, k)
                        read, mix = read + assembled - began, mix + time.process_time() - assembled
                    per_example = (1000 * read / (batches * batch_size), 1000 * mix / (batches * batch_size))
                    key = (store_name, sampling)
                    best[key] = min(best.get(key, per_example), per_example, key=sum)
    finally:
        mixer_base.track_phases = phased
    return best


def measure_loader(dataset, workers: int, batches: int, reuse: bool) -> tuple[float, list[int], float]:
    """Examples/s over `batches` batches after the first (worker start-up excluded), the peak
    RSS in kB of each worker process, and the CPU ms per example of this process and its workers
    together (what the machine's other jobs do not inflate as much as the rate)."""
    loader = MixerLoader(dataset, num_workers=workers, prefetch_factor=2, reuse_outputs=reuse)
    iterator = iter(loader)
    first = next(iterator)
    batch_size = first["mixture"].shape[0]
    workers_pids = [pid for pid in _children(os.getpid()) if _is_worker(pid)]
    cpu_started = time.process_time() + sum(_cpu_seconds(pid) for pid in workers_pids)
    started = time.perf_counter()
    delivered = 0
    while delivered < batches:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        assert batch["mixture"].shape[-1] == CROP
        delivered += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() + sum(_cpu_seconds(pid) for pid in workers_pids) - cpu_started
    memory = [_peak_rss_kb(pid) for pid in workers_pids]
    loader.close()
    examples = delivered * batch_size
    return examples / seconds, memory, 1000 * cpu / examples


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def _is_worker(pid: int) -> bool:
    """A spawned DataLoader worker (not multiprocessing's resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def print_costs(reads: dict[str, float], sampling: dict[tuple[str, str], tuple[float, float]]) -> None:
    print("\nvocal crop reads (Store.read_many, 1 process, 256 frames, CPU ms per crop): " +
          ", ".join(f"{name} {ms:.2f} ms" for name, ms in reads.items()))
    print("\nZarr backend in-process, reused outputs, CPU ms per example (read + silence rule, mix, total):")
    for (store_name, sampling_name), (read, mix) in sampling.items():
        print(f"  {store_name:13s} {sampling_name:31s} {read:6.2f} {mix:6.2f} {read + mix:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--tracks", type=int, default=6)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-examples", type=int, default=100, help="timed examples per baseline")
    parser.add_argument("--warm-up", type=int, default=10, help="untimed examples before each baseline")
    parser.add_argument("--costs-only", action="store_true", help="only the CPU costs of reads and sampling")
    parser.add_argument("--chunk-frames", type=int, default=Geometry().chunk_frames, help="the store's inner chunks")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        roots = write_corpus(directory / "audio", args.tracks, args.seconds)
        manifests = []
        for layout, root in roots.items():
            result = scan(root, ScanOptions(layout=layout, valid_fraction=0.0))
            manifests.append(read_manifest(write_manifest(directory / f"{layout}.jsonl", result.manifest)))
        store = directory / "store"
        build_store(manifests, store, geometry=Geometry(chunk_frames=args.chunk_frames))
        plain = without_checksums(store, directory / "store_plain")  # as built before checksums
        if args.costs_only:
            print(f"corpus: {args.tracks} instrumentals + {args.tracks} vocals x {args.seconds:g} s, "
                  f"chunks of {args.chunk_frames} frames")
            print_costs(read_costs(store, plain, crops=640), sampling_costs(store, plain, args.batch_size))
            return
        packed = directory / "store_packed"  # the same, WebDataset members blosc-compressed
        build_store(manifests, packed, geometry=Geometry(chunk_frames=args.chunk_frames, wds_compression="blosc-lz4"))
        wds_gb = {path.name: sum(f.stat().st_size for f in (path / "wds").rglob("*.tar")) / 1e9
                  for path in (store, packed)}
        print(f"corpus: {args.tracks} instrumentals + {args.tracks} vocals x {args.seconds:g} s; store built; "
              f"crop {CROP} frames, batch {args.batch_size}, {os.cpu_count()} cores")

        files = write_encoded_copies(roots, directory / "encoded")
        cache = write_npy_cache(files["wav"], directory / "npy-cache")
        warm = args.warm_up
        baselines = {}
        for fmt, label in (("wav", "(a) on the fly from WAV 44.1 kHz"), ("flac", "(a) on the fly from FLAC 44.1 kHz"),
                           ("mp3", "(a) on the fly from MP3 48 kHz (+soxr)")):
            baselines[label] = baseline_on_the_fly(files[fmt], args.baseline_examples, warm)
        baselines["(b) zarr-python random crops"] = baseline_zarr_python(store, args.baseline_examples, warm)
        baselines["(c) complex64 .npy cache, random crops"] = baseline_npy_cache(cache, args.baseline_examples, warm)
        a_examples, a_cpu = baselines["(a) on the fly from WAV 44.1 kHz"]
        b_examples = baselines["(b) zarr-python random crops"][0]
        config = MixerConfig(crop_frames=CROP, batch_size=args.batch_size, seed=0,
                             proportions={"augmented": 1.0}, examples_per_epoch=args.batch_size * 400)
        aligned = MixerConfig(**{**config.to_dict(), "vocal_offset_step": 256})
        rows = [(f"{label} (1 process)", examples, cpu_ms, []) for label, (examples, cpu_ms) in baselines.items()]
        w = args.workers
        for label, backend, source, mixer_config, workers, reuse in (
            ("mixer, Zarr/tensorstore, in-process", ZarrMixerDataset, store, config, 0, False),
            (f"mixer, Zarr/tensorstore, {w} workers", ZarrMixerDataset, store, config, w, False),
            (f"mixer, Zarr, {w} workers, reused outputs", ZarrMixerDataset, store, config, w, True),
            ("  same, vocal offsets chunk-aligned", ZarrMixerDataset, store, aligned, w, True),
            ("  same, no chunk checksums (old store)", ZarrMixerDataset, plain, config, w, True),
            (f"mixer, WebDataset, {w} workers", WdsMixerDataset, store, config, w, False),
            (f"mixer, WebDataset, {w} w., reused outputs", WdsMixerDataset, store, config, w, True),
            ("  same, no member checksums (old store)", WdsMixerDataset, plain, config, w, True),
            (f"mixer, WebDataset blosc, {w} w., reused", WdsMixerDataset, packed, config, w, True),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the old-store notice
                dataset = backend(source, mixer_config)
            examples, memory, cpu_ms = measure_loader(dataset, workers, args.batches, reuse)
            rows.append((label, examples, cpu_ms, memory))
        costs = read_costs(store, plain, crops=640)
        breakdown = sampling_costs(store, plain, args.batch_size)

        print(f"\nbaselines: {warm} warm-up examples, then {args.baseline_examples} timed; x (a) and (a)/CPU against "
              "(a) from WAV")
        print(f"\n{'path':50s} {'examples/s':>10s} {'x (a)':>6s} {'x (b)':>6s} {'CPU ms/ex':>9s} {'(a)/CPU':>7s}  worker peak RSS")
        for label, examples, cpu_ms, memory in rows:
            rss = ", ".join(f"{kb / 1024:.0f} MB" for kb in memory) or "-"
            print(f"{label:50s} {examples:10.1f} {examples / a_examples:6.2f} {examples / b_examples:6.2f} "
                  f"{cpu_ms:9.2f} {a_cpu / cpu_ms:7.2f}  {rss}")
        print_costs(costs, breakdown)
        hours = 2 * args.tracks * args.seconds / 3600
        print(f"\nWebDataset tars: {wds_gb['store'] / hours:.3f} GB per audio-hour as plain .npy, "
              f"{wds_gb['store_packed'] / hours:.3f} with blosc-lz4 members")
        load = os.getloadavg()
        print(f"\nload average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores; other jobs inflate it)")


if __name__ == "__main__":
    main()
