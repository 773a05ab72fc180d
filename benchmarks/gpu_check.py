"""One prepared GPU check: everything the project wants to know from a GPU, in one table.

    bash benchmarks/gpu_check.sh            # on a CUDA GPU, at most about 8 minutes
    bash benchmarks/gpu_check.sh --dry      # the same path on the CPU at tiny sizes (the test suite)

Sections, each reusing an existing benchmark:

1. the training step (`bench_model.device_step`): `frame-primer`, bfloat16 autocast, fused
   AdamW, at 512, 1024 and 2048 frames, with and without gradient checkpointing: examples/s,
   peak memory, and MFU = the step's FLOPs (`vr_model.network.flops.train_step_flops`) per second over
   the card's dense bfloat16 peak (datasheet, `DATASHEET_BF16_TFLOPS`; where the card is not
   listed, the bfloat16 matmul peak measured in this run, which the table also prints);
2. the trainer with the real loader (`bench_train.measure`: `vr_model.train.train`, the Zarr
   mixer in DataLoader workers) at 2048 frames on a store of synthetic pairs built here: the
   share of step time spent waiting for data, with 2, 4 and 8 workers;
3. separation speed (`Separator.separate_file` on a synthetic song, `bench_separate.write_song`)
   in seconds of audio per second, with the `frame-primer` checkpoint the trainer just wrote;
4. `vrtrain eval` (the console command, in a subprocess) over the store's songs with that
   checkpoint: wall seconds per song, the process start included.

`--dry` runs every section through the same code on the CPU with `tiny` at small sizes; its
figures say only that the path works. Nothing here is a GPU figure unless the table says CUDA.
"""

from __future__ import annotations

import argparse
import multiprocessing
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# Dense (no sparsity) bfloat16 tensor-core peaks from the vendors' datasheets, TFLOP/s, matched
# by a substring of torch.cuda.get_device_name(). MFU is quoted against these when the card is
# listed: a measured matmul peak flatters the model (it is what the card reaches, not what it has).
DATASHEET_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
    "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0,
}


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPU sizes, or tiny ones for `--dry` on the CPU."""

    device: str
    preset: str
    step_frames: tuple[int, ...]
    step_batch: int
    step_steps: int
    train_frames: int
    train_batch: int
    train_steps: int
    log_every: int
    workers: tuple[int, ...]
    songs: int
    song_seconds: float
    separate_seconds: float


GPU = Sizes(device="cuda", preset="frame-primer", step_frames=(512, 1024, 2048), step_batch=1, step_steps=5,
            train_frames=2048, train_batch=4, train_steps=30, log_every=5, workers=(2, 4, 8), songs=6,
            song_seconds=60.0, separate_seconds=120.0)
# bfloat16 is emulated on CPUs without it: tiny at tens of frames keeps the dry run to seconds.
DRY = Sizes(device="cpu", preset="tiny", step_frames=(16,), step_batch=1, step_steps=1,
            train_frames=32, train_batch=2, train_steps=4, log_every=2, workers=(1,), songs=2,
            song_seconds=3.0, separate_seconds=4.0)


def card_peak(device, measured_tflops: float) -> tuple[float, str]:
    """(bfloat16 peak TFLOP/s, where it comes from) of the device."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in DATASHEET_BF16_TFLOPS.items():
            if key in name:
                return value, f"datasheet {value:g}"
    return measured_tflops, "measured matmul"


def step_rows(sizes: Sizes, device) -> list[tuple[str, str]]:
    """Section 1: (setting, figures) rows of the training step."""
    import torch

    from bench_model import device_bf16_peak_tflops, device_step
    from vr_model.network.flops import train_step_flops

    measured = device_bf16_peak_tflops(device, 8192 if device.type == "cuda" else 64)
    peak, origin = card_peak(device, measured)
    rows = [("bf16 peak TFLOP/s", f"{peak:.4g} ({origin}); matmul now {measured:.4g}")]
    for frames in sizes.step_frames:
        flops = train_step_flops(sizes.preset, frames, sizes.step_batch)
        for checkpointing in (False, True):
            setting = f"step {frames} fr, ckpt {'on' if checkpointing else 'off'}"
            result = device_step(sizes.preset, frames, sizes.step_batch, sizes.step_steps, checkpointing, device)
            if result["oom"]:
                rows.append((setting, "out of memory"))
                continue
            rate = flops / result["seconds"] / 1e12
            memory = f"{result['peak_bytes'] / 2**30:.2f} GiB" if result["peak_bytes"] is not None else "- GiB"
            rows.append((setting, f"{sizes.step_batch / result['seconds']:.2f} ex/s, {memory}, "
                                  f"MFU {100 * rate / peak:.1f}%"))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def write_pairs(directory: Path, sizes: Sizes) -> Path:
    """`sizes.songs` synthetic pairs (mixture = instrumental + vocal) and their manifest."""
    from vr_data.audio import write_audio
    from vr_data.catalog.manifest import write_manifest
    from vr_data.catalog.scan import ScanOptions, scan
    from vr_data.testing.synth import music_like

    root = directory / "pairs"
    for index in range(sizes.songs):
        instrumental = music_like(sizes.song_seconds, 44100, index, "mix")
        vocal = music_like(sizes.song_seconds, 44100, 100 + index, "sparse")
        mixture = (instrumental + vocal).clip(-1, 1)
        write_audio(root / "mixtures" / f"song_{index:02d}_mix.wav", mixture, 44100)
        write_audio(root / "instruments" / f"song_{index:02d}_inst.wav", instrumental, 44100)
    result = scan(root, ScanOptions(layout="pairs", valid_fraction=0.0))
    return write_manifest(directory / "pairs.jsonl", result.manifest)


def build_pair_store(manifest_path: Path, out: Path, parallel: bool) -> Path:
    """The store of the pairs; `parallel`: one process per core but one (the dry run builds in-process)."""
    from vr_data.catalog.manifest import read_manifest
    from vr_data.store.build import build_store

    if not parallel:
        build_store([read_manifest(manifest_path)], out)
        return out
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    # spawn: tensorstore's threads forbid fork() in a process that has used it
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        build_store([read_manifest(manifest_path)], out, executor=executor)
    return out


def loader_rows(sizes: Sizes, store: Path, runs: Path) -> tuple[list[tuple[str, str]], Path]:
    """Section 2: data-wait share of the real trainer per worker count; returns the last run."""
    from bench_train import measure

    precision = "bf16" if sizes.device == "cuda" else "fp32"
    common = [f"model.preset={sizes.preset}",
              f"curriculum=[{{crop_frames={sizes.train_frames}, batch_size={sizes.train_batch}, accumulation=1, "
              f"steps={sizes.train_steps}}}]",
              "mixer.proportions={pair = 1.0, augmented = 0.0, pretrain = 0.0}", f"log.every={sizes.log_every}",
              "log.tensorboard=false", "log.progress=plain", "checkpoint.every=100000", "validation.every=0",
              "train.warmup_steps=1", f"train.device={sizes.device}", f"train.precision={precision}"]
    rows, run = [], runs
    for workers in sizes.workers:
        run = runs / f"workers-{workers}"
        result = measure(store, run, common + [f"data.workers={workers}"], in_memory=False)
        rows.append((f"trainer {sizes.train_frames} fr, {workers} workers",
                     f"data wait {100 * result['data_wait']:.1f}%, {result['examples_per_s']:.2f} ex/s"))
    return rows, run


def separation_row(sizes: Sizes, run: Path, work: Path) -> tuple[str, str]:
    """Section 3: seconds of audio separated per wall second with the run's checkpoint."""
    import torch

    from bench_separate import write_song
    from vr_model.inference.loading import separator_from_checkpoint

    separator = separator_from_checkpoint(run, sizes.device)
    song = write_song(work / "song.wav", sizes.separate_seconds / 60)
    separator.separate_file(song, work / "warm-up", subtype="PCM_16")  # CUDA context, kernels, allocator
    if sizes.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = separator.separate_file(song, work / "separated", subtype="PCM_16")
    seconds = time.perf_counter() - started
    return (f"separate ({sizes.preset}, {result.seconds:.0f} s song)",
            f"{result.seconds / seconds:.1f} s audio/s ({seconds:.2f} s)")


def eval_row(sizes: Sizes, run: Path, manifest: Path, out: Path) -> tuple[str, str]:
    """Section 4: `vrtrain eval` over every song of the manifest, in a fresh process."""
    command = [sys.executable, "-c", "from pipelines.entry import vrtrain; vrtrain()", "eval",
               "--checkpoint", str(run), "--manifest", str(manifest), "--split", "train", "--out", str(out),
               "--device", sizes.device, "--no-plots"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"vrtrain eval failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    songs = len(json.loads((out / "eval.json").read_text())["tracks"])
    return (f"vrtrain eval ({songs} x {sizes.song_seconds:g} s)",
            f"{seconds / songs:.2f} s/song ({seconds:.1f} s, start included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="the same path on the CPU at tiny sizes")
    parser.add_argument("--workdir", type=Path, help="where the corpus, store and runs go (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    sizes = DRY if args.dry else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch (use --dry for the CPU path)")
    device = torch.device(sizes.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run: not GPU figures)"
    started = time.perf_counter()
    rows: list[tuple[str, str, float | None]] = []

    def add(new_rows: list[tuple[str, str]], since: float) -> None:
        """A section's rows; its wall seconds go on its first row."""
        for index, (setting, figures) in enumerate(new_rows):
            rows.append((setting, figures, time.perf_counter() - since if index == 0 else None))

    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.workdir) as temporary:
        work = Path(temporary)
        begin = time.perf_counter()
        add(step_rows(sizes, device), begin)
        begin = time.perf_counter()
        manifest = write_pairs(work / "data", sizes)
        store = build_pair_store(manifest, work / "store", parallel=not args.dry)
        add([("store for the trainer", f"{sizes.songs} pairs x {sizes.song_seconds:g} s")], begin)
        begin = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            trainer, run = loader_rows(sizes, store, work / "runs")
        add(trainer, begin)
        begin = time.perf_counter()
        add([separation_row(sizes, run, work)], begin)
        begin = time.perf_counter()
        add([eval_row(sizes, run, manifest, work / "eval")], begin)
    print(f"gpu_check on {name}, torch {torch.__version__}, {sizes.preset}, bf16 autocast "
          f"(step batch {sizes.step_batch}, trainer batch {sizes.train_batch})")
    print(f"{'measurement':<34} {'figures':<54} {'section s':>9}")
    for setting, figures, seconds in rows:
        print(f"{setting:<34} {figures:<54} {'' if seconds is None else f'{seconds:.0f}':>9}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
