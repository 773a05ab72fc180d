"""Mixer benchmark: mixed training examples per second, against two baselines, in one run.

Usage:
    python benchmarks/bench_mixer.py [--seconds 45] [--tracks 6] [--batches 60] [--workers 2]

Writes `--tracks` instrumentals and vocals of `--seconds` each (synthetic, 44.1 kHz WAV), builds a
store with the default STFT (n_fft 2048, hop 1024, 1025 bins) and codec, then measures, all in
this run on this machine:

- baseline (a): on-the-fly decode + STFT of crops from the WAV files (soundfile read of the
  crop's samples, librosa.stft per channel as the classic scripts do, complex mix, magnitude),
  one process: crops/s and examples/s per core;
- baseline (b): naive random 256-frame crop reads through zarr-python from the store
  (`array[start:stop]`), decode, complex mix, magnitude, one process;
- the mixer (`ZarrMixerDataset`, augmented mixes only: 2 crops per example) through
  `MixerLoader` with `--workers` DataLoader workers and in-process (0 workers), and the
  WebDataset backend with the same workers, each with fresh output tensors per batch and with
  `reuse_outputs=True`, and the WebDataset backend on a store whose tar members are
  blosc-compressed: examples/s delivered as batches ready for the model (crop 256 frames,
  stereo, 1025 bins, float32 magnitudes, crop-max normalised);
- the peak RSS (VmHWM) of each DataLoader worker process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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


def baseline_on_the_fly(roots: dict[str, Path], examples: int, seed: int = 0) -> tuple[float, float]:
    """(a) decode + STFT per crop from WAV; returns (examples/s, crops/s), one process."""
    import librosa
    import soundfile as sf

    rng = np.random.default_rng(seed)
    instrumentals = sorted(roots["instrumentals"].glob("*.wav"))
    vocals = sorted(roots["vocals"].glob("*.wav"))
    samples = (CROP - 1) * HOP
    started = time.perf_counter()
    for _ in range(examples):
        crops = []
        for files in (instrumentals, vocals):
            path = files[int(rng.integers(0, len(files)))]
            frames = sf.info(str(path)).frames
            start = int(rng.integers(0, frames - samples))
            audio, _ = sf.read(str(path), start=start, frames=samples, dtype="float32", always_2d=True)
            crops.append(np.stack([librosa.stft(audio[:, c], n_fft=N_FFT, hop_length=HOP) for c in range(2)]))
        magnitude = np.abs(crops[0] + 0.7 * crops[1])
        magnitude /= magnitude.max()
    seconds = time.perf_counter() - started
    return examples / seconds, 2 * examples / seconds


def baseline_zarr_python(store: Path, examples: int, seed: int = 0) -> tuple[float, float]:
    """(b) naive random crop reads through zarr-python; returns (examples/s, crops/s), one process."""
    import json

    import zarr

    from vr_data.store.codec import decode

    rng = np.random.default_rng(seed)
    tracks = [json.loads(line) for line in (store / "tracks.jsonl").read_text().splitlines()]
    arrays = {name: zarr.open_array(store / "zarr" / name, mode="r") for name in ("instrumental", "vocal")}
    by_role = {role: [t for t in tracks if t["role"] == role] for role in ("instrumental", "vocal")}
    started = time.perf_counter()
    for _ in range(examples):
        crops = []
        for role in ("instrumental", "vocal"):
            track = by_role[role][int(rng.integers(0, len(by_role[role])))]
            start = track["zarr"]["start"] + int(rng.integers(0, track["frames"] - CROP))
            crops.append(decode(arrays[role][start:start + CROP]))
        magnitude = np.abs(crops[0] + 0.7 * crops[1])
        magnitude /= magnitude.max()
    seconds = time.perf_counter() - started
    return examples / seconds, 2 * examples / seconds


def measure_loader(dataset, workers: int, batches: int, reuse: bool) -> tuple[float, list[int]]:
    """Examples/s over `batches` batches after the first (worker start-up excluded), and the peak
    RSS in kB of each worker process."""
    loader = MixerLoader(dataset, num_workers=workers, prefetch_factor=2, reuse_outputs=reuse)
    iterator = iter(loader)
    first = next(iterator)
    batch_size = first["mixture"].shape[0]
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
    memory = [_peak_rss_kb(pid) for pid in _children(os.getpid())]
    loader.close()
    return delivered * batch_size / seconds, memory


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


def _peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--tracks", type=int, default=6)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-examples", type=int, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        roots = write_corpus(directory / "audio", args.tracks, args.seconds)
        manifests = []
        for layout, root in roots.items():
            result = scan(root, ScanOptions(layout=layout, valid_fraction=0.0))
            manifests.append(read_manifest(write_manifest(directory / f"{layout}.jsonl", result.manifest)))
        store = directory / "store"
        build_store(manifests, store)
        packed = directory / "store_packed"  # the same, WebDataset members blosc-compressed
        build_store(manifests, packed, geometry=Geometry(wds_compression="blosc-lz4"))
        wds_gb = {path.name: sum(f.stat().st_size for f in (path / "wds").rglob("*.tar")) / 1e9
                  for path in (store, packed)}
        print(f"corpus: {args.tracks} instrumentals + {args.tracks} vocals x {args.seconds:g} s; store built; "
              f"crop {CROP} frames, batch {args.batch_size}, {os.cpu_count()} cores")

        a_examples, a_crops = baseline_on_the_fly(roots, args.baseline_examples)
        b_examples, b_crops = baseline_zarr_python(store, args.baseline_examples)
        config = MixerConfig(crop_frames=CROP, batch_size=args.batch_size, seed=0,
                             proportions={"augmented": 1.0}, examples_per_epoch=args.batch_size * 400)
        rows = [
            ("(a) on-the-fly decode + STFT (1 process)", a_examples, a_crops, []),
            ("(b) zarr-python random crops (1 process)", b_examples, b_crops, []),
        ]
        for label, backend, workers, reuse in (
            ("mixer, Zarr/tensorstore, in-process", ZarrMixerDataset, 0, False),
            (f"mixer, Zarr/tensorstore, {args.workers} workers", ZarrMixerDataset, args.workers, False),
            (f"mixer, Zarr, {args.workers} workers, reused outputs", ZarrMixerDataset, args.workers, True),
            (f"mixer, WebDataset, {args.workers} workers", WdsMixerDataset, args.workers, False),
            (f"mixer, WebDataset, {args.workers} w., reused outputs", WdsMixerDataset, args.workers, True),
            (f"mixer, WebDataset blosc, {args.workers} w., reused", WdsMixerDataset, args.workers, True),
        ):
            source = packed if "blosc" in label else store
            examples, memory = measure_loader(backend(source, config), workers, args.batches, reuse)
            rows.append((label, examples, 2 * examples, memory))

        print(f"\n{'path':46s} {'examples/s':>11s} {'crops/s':>9s} {'x (a)':>7s} {'x (b)':>7s}  worker peak RSS")
        for label, examples, crops, memory in rows:
            rss = ", ".join(f"{kb / 1024:.0f} MB" for kb in memory) or "-"
            print(f"{label:46s} {examples:11.1f} {crops:9.1f} {examples / a_examples:7.2f} {examples / b_examples:7.2f}  {rss}")
        hours = 2 * args.tracks * args.seconds / 3600
        print(f"\nWebDataset tars: {wds_gb['store'] / hours:.3f} GB per audio-hour as plain .npy, "
              f"{wds_gb['store_packed'] / hours:.3f} with blosc-lz4 members")
        load = os.getloadavg()
        print(f"\nload average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores; other jobs inflate it)")


if __name__ == "__main__":
    main()
