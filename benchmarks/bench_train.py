"""Trainer benchmark: does the loader keep up with the training step?

Usage:
    python benchmarks/bench_train.py [--steps 12] [--batch 4] [--rounds 4] [--seconds 45] [--tracks 6]

Builds a store of `--tracks` synthetic instrumentals and vocals of `--seconds` each (44.1 kHz,
default STFT: n_fft 2048, hop 1024, 1025 bins), then runs `vr_model.train.train` - the real
loop: forward, backward, clip, AdamW, EMA, logging - on the `tiny` preset at 256 frames
(augmented mixes, crop-max normalised), twice per round, alternating, in this process:

- fed by the real loader (`MixerLoader`, Zarr backend, 1 DataLoader worker, reused outputs);
- fed one premade batch from memory, over and over (the same loop with
  `vr_model.train.loop.make_loader` replaced by an in-memory feed): the step's own speed.

It prints examples/s of both (from the run's metrics, the first log interval left out as
warm-up), the loader/in-memory ratio of each round and their median (adjacent runs share the
machine's load; the order alternates between rounds), the share of step time the loop spent
blocked on the loader, the peak RSS of the training process and of the loader worker, and the
load average. Targets on the development machine: data wait <= 5% and >= 0.95x the in-memory
examples/s.

With a CUDA GPU it also runs `frame-primer` at 512, 1024 and 2048 frames under bf16 with and
without gradient checkpointing (in-memory feed; examples/s and peak GPU memory).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vr_data.audio import write_audio  # noqa: E402
from vr_data.catalog.manifest import read_manifest, write_manifest  # noqa: E402
from vr_data.catalog.scan import ScanOptions, scan  # noqa: E402
from vr_data.store.build import build_store  # noqa: E402
from vr_data.testing.synth import music_like  # noqa: E402
from vr_model.train import load_config, train  # noqa: E402
from vr_model.train import loop as training_loop  # noqa: E402
from vr_model.train.runlog import read_metrics  # noqa: E402


def build_bench_store(directory: Path, tracks: int, seconds: float) -> Path:
    roots = {"instrumentals": directory / "instrumentals", "vocals": directory / "vocals"}
    for index in range(tracks):
        write_audio(roots["instrumentals"] / f"inst_{index:02d}.wav", music_like(seconds, 44100, index, "mix"), 44100)
        write_audio(roots["vocals"] / f"vocal_{index:02d}.wav", music_like(seconds, 44100, 100 + index, "sparse"), 44100)
    manifests = []
    for layout, root in roots.items():
        result = scan(root, ScanOptions(layout=layout, valid_fraction=0.0))
        manifests.append(read_manifest(write_manifest(directory / f"{layout}.jsonl", result.manifest)))
    build_store(manifests, directory / "store")
    return directory / "store"


class InMemoryFeed:
    """Stands in for a `MixerLoader`: yields one premade batch forever (same tensors, so the
    loop gets the batch with no work at all), with the loader's state interface."""

    def __init__(self, loader):
        self.dataset = loader.dataset
        self.batch = next(iter(loader))
        self.batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
        loader.close()

    def __iter__(self):
        while True:
            yield self.batch

    def state_dict(self) -> dict:
        return {"epoch": 0, "batch": 0, "config": self.dataset.config.to_dict()}

    def close(self) -> None:
        pass


def in_memory_loader(*args, **kwargs):
    return InMemoryFeed(real_make_loader(*args, **kwargs))


real_make_loader = training_loop.make_loader


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    except OSError:
        pass
    return found


class WorkerPeak(threading.Thread):
    """Polls the peak RSS (VmHWM) of this process's children (the DataLoader worker)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kb = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            for child in _children(os.getpid()):
                self.peak_kb = max(self.peak_kb, _status_kb(child, "VmHWM"))
            time.sleep(0.2)


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def measure(store: Path, out: Path, overrides: list[str], in_memory: bool) -> dict:
    """One run of the real loop; examples/s and data-wait share over the log intervals after the first."""
    config = load_config(None, overrides)
    training_loop.make_loader = in_memory_loader if in_memory else real_make_loader
    reset_peak_rss()
    watcher = WorkerPeak()
    watcher.start()
    cpu_started = time.process_time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the run's progress lines; train.log has them
            summary = train(store, out, config)
    finally:
        training_loop.make_loader = real_make_loader
        watcher.running = False
        watcher.join()
    records = [r for r in read_metrics(out) if r.get("kind") == "train"][1:]
    seconds = sum(r["seconds_per_step"] * config.log.every for r in records)
    examples = sum(r["examples_per_s"] * r["seconds_per_step"] * config.log.every for r in records)
    waited = sum(r["data_wait"] * r["seconds_per_step"] * config.log.every for r in records)
    # CPU time of this process per example over the whole run (set-up included): what the loop
    # itself costs, whatever share of the cores the machine's other jobs leave it.
    cpu_per_example = (time.process_time() - cpu_started) / summary.examples
    return {"examples_per_s": examples / seconds, "data_wait": waited / seconds, "cpu_per_example": cpu_per_example,
            "rss_mb": _status_kb(os.getpid(), "VmHWM") / 1024, "worker_rss_mb": watcher.peak_kb / 1024}


def cpu_benchmark(store: Path, work: Path, args) -> None:
    common = ["model.preset=tiny", f"curriculum=[{{crop_frames=256, batch_size={args.batch}, accumulation=1, "
              f"steps={args.steps}}}]", "mixer.proportions={augmented = 1.0}", "data.workers=1",
              "data.reuse_outputs=true", f"log.every={args.log_every}", "log.tensorboard=false",
              "log.progress=plain", "checkpoint.every=100000", "train.warmup_steps=5", "train.device=cpu"]
    results = {"loader": [], "memory": []}
    load_at_start = os.getloadavg()[0]
    for round_index in range(args.rounds):
        # Alternate which feed goes first, so a load trend favours neither.
        for label in (("loader", "memory") if round_index % 2 == 0 else ("memory", "loader")):
            run_dir = work / f"{label}-{round_index}"
            result = measure(store, run_dir, common, in_memory=label == "memory")
            results[label].append(result)
            print(f"round {round_index + 1} {label:6s}: {result['examples_per_s']:.2f} examples/s, data wait "
                  f"{100 * result['data_wait']:.2f}%, {result['cpu_per_example']:.2f} CPU s/example, "
                  f"load {os.getloadavg()[0]:.1f}, peak RSS {result['rss_mb']:.0f} MB"
                  + (f", worker {result['worker_rss_mb']:.0f} MB" if label == "loader" else ""), flush=True)
    loader = sum(r["examples_per_s"] for r in results["loader"]) / args.rounds
    memory = sum(r["examples_per_s"] for r in results["memory"]) / args.rounds
    wait = sum(r["data_wait"] for r in results["loader"]) / args.rounds
    # Adjacent runs share the machine's load best: the median of their ratios is the robust figure.
    pairs = sorted(a["examples_per_s"] / b["examples_per_s"] for a, b in zip(results["loader"], results["memory"]))
    paired = pairs[len(pairs) // 2] if len(pairs) % 2 else (pairs[len(pairs) // 2 - 1] + pairs[len(pairs) // 2]) / 2
    print(f"\ntiny, 256 frames, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average "
          f"{load_at_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print("loader/memory examples/s per round: " + ", ".join(f"{ratio:.3f}" for ratio in
          (a["examples_per_s"] / b["examples_per_s"] for a, b in zip(results["loader"], results["memory"])))
          + f"; median {paired:.3f}")
    cpu = {label: sum(r["cpu_per_example"] for r in runs) / len(runs) for label, runs in results.items()}
    print(f"{'feed':30s} {'examples/s':>10s} {'x memory':>8s} {'data wait':>9s} {'CPU s/ex':>8s} {'peak RSS':>9s}")
    print(f"{'real loader, Zarr, 1 worker':30s} {loader:10.2f} {loader / memory:8.3f} {100 * wait:8.2f}% "
          f"{cpu['loader']:8.2f} {max(r['rss_mb'] for r in results['loader']):6.0f} MB")
    print(f"{'  its worker process':30s} {'':10s} {'':8s} {'':9s} {'':8s} "
          f"{max(r['worker_rss_mb'] for r in results['loader']):6.0f} MB")
    print(f"{'one premade batch in memory':30s} {memory:10.2f} {1.0:8.3f} {'-':>9s} "
          f"{cpu['memory']:8.2f} {max(r['rss_mb'] for r in results['memory']):6.0f} MB")
    verdict = "met" if wait <= 0.05 and paired >= 0.95 else "NOT met"
    print(f"targets (data wait <= 5%, median paired ratio >= 0.95x in-memory): {verdict}")


def cuda_benchmark(store: Path, work: Path, steps: int) -> None:
    if not torch.cuda.is_available():
        print("\nno CUDA GPU here: the frame-primer bf16 figures (512/1024/2048 frames, +/- checkpointing) "
              "are not measured")
        return
    print(f"\nframe-primer on {torch.cuda.get_device_name()}, bf16 autocast, in-memory feed, {steps} steps")
    print(f"{'frames':>6s} {'batch':>5s} {'checkpointing':>13s} {'examples/s':>11s} {'peak GPU memory':>16s}")
    for frames, batch in ((512, 4), (1024, 2), (2048, 1)):
        for checkpointing in (False, True):
            overrides = ["model.preset=frame-primer", f"model.gradient_checkpointing={str(checkpointing).lower()}",
                         f"curriculum=[{{crop_frames={frames}, batch_size={batch}, accumulation=1, steps={steps}}}]",
                         "mixer.proportions={augmented = 1.0}", "data.workers=1", "log.every=5",
                         "log.tensorboard=false", "log.progress=plain", "checkpoint.every=100000",
                         "train.ema_decay=0", "train.device=cuda", "train.precision=bf16"]
            torch.cuda.reset_peak_memory_stats()
            try:
                result = measure(store, work / f"cuda-{frames}-{checkpointing}", overrides, in_memory=True)
                peak = torch.cuda.max_memory_allocated() / 2**30
                print(f"{frames:6d} {batch:5d} {str(checkpointing):>13s} {result['examples_per_s']:11.2f} {peak:13.2f} GiB")
            except Exception as error:  # noqa: BLE001 - an OOM is a result here
                print(f"{frames:6d} {batch:5d} {str(checkpointing):>13s} {'failed':>11s}  {str(error)[:60]}")
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--log-every", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--tracks", type=int, default=6)
    parser.add_argument("--cuda-steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as temporary:
        work = Path(temporary)
        started = time.perf_counter()
        store = build_bench_store(work / "data", args.tracks, args.seconds)
        print(f"store: {args.tracks} instrumentals + {args.tracks} vocals x {args.seconds:g} s "
              f"({time.perf_counter() - started:.0f} s to build)", flush=True)
        cpu_benchmark(store, work / "runs", args)
        cuda_benchmark(store, work / "runs", args.cuda_steps)


if __name__ == "__main__":
    main()
