"""The example ledger's cost (`log.examples = true`, `RUN_DIR/examples.jsonl`).

Usage:
    python benchmarks/bench_ledger.py [--steps 16] [--batch 8] [--crop 64] [--rounds 3] [--tracks 4]

Builds a small synthetic store (bench_train's: instrumentals and vocals, default STFT), then runs
the real training loop (`vr_model.train.train`, one process, `tiny` preset, augmented mixes, the
loader in the main process) with and without the ledger, alternating which goes first, and
prints examples/s of each (from the run's metrics, the first log interval left out), the paired
ratio per round and its median. A short crop keeps the step short, so the ledger's share is an
upper bound for longer crops. It also times the ledger alone: `ExampleLedger.add` for a step's
records (JSON line, write, flush), in ms per step, the bytes per example it writes, and one
fsync (`ExampleLedger.sync`, once per checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench_train import build_bench_store  # noqa: E402
from vr_model.train import load_config, train  # noqa: E402
from vr_model.train.ledger import EXAMPLES, ExampleLedger, read_ledger  # noqa: E402
from vr_model.train.runlog import read_metrics  # noqa: E402


def run(store: Path, out: Path, overrides: list[str]) -> float:
    config = load_config(None, overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        train(store, out, config)
    records = [r for r in read_metrics(out) if r.get("kind") == "train"][1:]
    seconds = sum(r["seconds_per_step"] * config.log.every for r in records)
    examples = sum(r["examples_per_s"] * r["seconds_per_step"] * config.log.every for r in records)
    return examples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_ledger_"))
    store = build_bench_store(work, args.tracks, args.seconds)
    common = ["model.preset=tiny", f"curriculum=[{{crop_frames={args.crop}, batch_size={args.batch}, "
              f"accumulation=1, steps={args.steps}}}]", "mixer.proportions={augmented = 1.0}", "data.workers=0",
              "log.every=4", "log.tensorboard=false", "log.progress=plain", "checkpoint.every=100000",
              "validation.every=0", "train.threads=1", "train.device=cpu"]
    load_at_start = os.getloadavg()[0]
    rates: dict[str, list[float]] = {"without": [], "with": []}
    for round_index in range(args.rounds):
        for label in (("without", "with") if round_index % 2 == 0 else ("with", "without")):
            rate = run(store, work / f"{label}-{round_index}", [*common, f"log.examples={str(label == 'with').lower()}"])
            rates[label].append(rate)
            print(f"round {round_index + 1} {label:7s} ledger: {rate:.2f} examples/s, load {os.getloadavg()[0]:.1f}",
                  flush=True)
    ratios = [w / wo for w, wo in zip(rates["with"], rates["without"])]
    print(f"\ntiny, {args.crop} frames, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, 1 torch thread, "
          f"{os.cpu_count()} CPUs, load average {load_at_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"examples/s without the ledger {statistics.mean(rates['without']):.2f}, with "
          f"{statistics.mean(rates['with']):.2f}; with/without per round "
          + ", ".join(f"{r:.3f}" for r in ratios) + f"; median {statistics.median(ratios):.3f}")

    # The ledger alone: one step's records (taken from a run's ledger) written again and again.
    step = read_ledger(work / "with-0")[0]
    ledger_dir = work / "ledger-alone"
    ledger_dir.mkdir()
    ledger = ExampleLedger(ledger_dir, True, True)
    repeats = 200
    started = time.perf_counter()
    for number in range(repeats):
        ledger.add(number + 1, 0, step["examples"], 1)
    seconds = (time.perf_counter() - started) / repeats
    started = time.perf_counter()
    for _ in range(20):
        ledger.sync()
    sync = (time.perf_counter() - started) / 20
    ledger.close()
    size = (ledger_dir / EXAMPLES).stat().st_size / (repeats * len(step["examples"]))
    print(f"ledger alone: {1000 * seconds:.3f} ms per step of {len(step['examples'])} examples "
          f"(JSON, write, flush), {size:.0f} bytes per example; {1000 * sync:.2f} ms per fsync "
          "(once per checkpoint)")


if __name__ == "__main__":
    main()
