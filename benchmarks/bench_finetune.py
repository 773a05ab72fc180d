"""Finetuning benchmark: frozen-encoder finetuning against full finetuning of the same model.

    .venv/bin/python benchmarks/bench_finetune.py [--preset tiny] [--crop 256] [--batch 2]
        [--steps 4] [--rounds 3] [--threads 1] [--no-activations]

One training step = the trainer's step (`vr_model.train`): forward + the supervised L1 loss
over valid frames + backward + gradient clipping + AdamW update (the optimizer holds only the
trainable parameters); one micro-batch, no EMA. On CPU each (mode, round) runs in a fresh
process, alternating full / frozen, so each peak RSS (`ru_maxrss`) is that run's alone and both
modes see the same load; "over model" is the peak minus the RSS after building the model and
the optimizer. The figure is the median over rounds of each run's mean step time (after one
warm-up step), and the speed-up is full / frozen in this one run. On CUDA (when present)
`frame-primer` is measured in-process under bf16 autocast with `torch.cuda.max_memory_allocated`.

Training-step FLOPs (forward + backward, matmuls and convolutions, counted on the meta device)
give the speed-up a compute-bound device could reach, independent of this machine's load.
"Saved for backward" counts what autograd keeps for the backward pass in one training forward
of one example (fp32, each storage once, parameters excluded): the frozen encoder keeps none.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("full", "frozen")


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def make_run(preset: str, mode: str, device: str = "cpu"):
    """(model, optimizer, step) for `mode`, from the trainer's own pieces: its model builder, freeze
    plan, optimizer (AdamW over the trainable parameters, decayed and not), supervised objective
    and gradient clipping; `step(mixture, target, valid)` is one optimizer step of the loop (one
    micro-batch, no EMA) and returns the loss."""
    import math

    import torch

    from vr_model.train.freeze import FreezePlan, apply_plan
    from vr_model.network.presets import get_config
    from vr_model.train import load_config
    from vr_model.train.build import build_model, make_optimizer
    from vr_model.train.objectives import OBJECTIVES, StepContext

    config = load_config(None, [f"model.preset={preset}", f"train.freeze={'encoders' if mode == 'frozen' else 'none'}"])
    model = build_model(get_config(preset), seed=0).to(device).train()
    plan = FreezePlan(config.train.freeze)
    apply_plan(model, plan, 0)
    optimizer = make_optimizer(model, config.train, torch.device(device), plan, 0)
    parameters = [p for p in model.parameters() if p.requires_grad]
    objective = OBJECTIVES["supervised"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None

    def step(mixture, target, valid):
        batch = {"mixture": mixture, "target": target, "valid": valid}
        if autocast is not None:
            with autocast:
                terms = objective(model, batch, config, StepContext(1, 0, 0, 1))
        else:
            terms = objective(model, batch, config, StepContext(1, 0, 0, 1))
        loss = terms.error_sum / terms.count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.train.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return model, optimizer, step


def synthetic_batch(bins: int, batch: int, crop: int, device: str = "cpu"):
    import torch

    generator = torch.Generator().manual_seed(1)
    mixture = torch.rand(batch, 2, bins + 1, crop, generator=generator)
    target = mixture * torch.rand(batch, 2, bins + 1, crop, generator=generator)
    valid = torch.ones(batch, crop, dtype=torch.bool)
    return mixture.to(device), target.to(device), valid.to(device)


def measure_cpu(preset: str, mode: str, crop: int, batch: int, steps: int, threads: int) -> dict:
    """Runs in a child process: mean step time and peak RSS of one mode."""
    import torch

    from vr_model.train.freeze import parameter_counts

    torch.set_num_threads(threads)
    model, _, step = make_run(preset, mode)
    mixture, target, valid = synthetic_batch(model.config.bins, batch, crop)
    baseline = _rss_mb()
    times = []
    for index in range(steps + 1):
        started = time.perf_counter()
        step(mixture, target, valid)
        if index > 0:  # the first step pays for oneDNN primitive creation and optimizer state
            times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    counts = parameter_counts(model)
    return {"mode": mode, "step_seconds": sum(times) / len(times), "peak_rss_mb": peak,
            "over_model_mb": peak - baseline, "trainable": counts.trainable, "frozen": counts.frozen}


def measure_cuda(preset: str, crop: int, batch: int, steps: int, rounds: int) -> dict[str, dict]:
    """Both modes in this process on the GPU, alternating; peak memory per mode."""
    import torch

    results: dict[str, dict] = {mode: {"times": []} for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            model, optimizer, step = make_run(preset, mode, "cuda")
            mixture, target, valid = synthetic_batch(model.config.bins, batch, crop, "cuda")
            step(mixture, target, valid)  # warm-up: kernels, optimizer state
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(steps):
                step(mixture, target, valid)
            torch.cuda.synchronize()
            results[mode]["times"].append((time.perf_counter() - started) / steps)
            results[mode]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            del model, optimizer, step, mixture, target, valid
    return results


def saved_for_backward_bytes(preset: str, frames: int, mode: str) -> int:
    """Bytes autograd keeps for backward in one training forward of one example (fp32)."""
    import torch

    from vr_model import build_model
    from vr_model.train.freeze import freeze

    torch.manual_seed(0)
    model = build_model(preset).train()
    if mode == "frozen":
        freeze(model, "encoders")
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.rand(1, 2, model.config.bins + 1, frames))
    return sum(storages.values())


def step_flops(preset: str, frames: int, mode: str) -> int:
    """Matmul and convolution FLOPs of one training forward + backward of one example, counted
    by `FlopCounterMode` on the meta device (no memory, no time; element-wise work not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vr_model import build_model
    from vr_model.train.freeze import freeze

    with torch.device("meta"):
        model = build_model(preset).train()
        if mode == "frozen":
            freeze(model, "encoders")
        magnitude = torch.empty(1, 2, model.config.bins + 1, frames)
    counter = FlopCounterMode(display=False)
    with counter:
        model(magnitude).sum().backward()
    return counter.get_total_flops()


def quadratic_through(points: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(a, b, c) of a + b*T + c*T^2 through three (T, value) points."""
    import numpy as np

    frames, values = zip(*points)
    return tuple(np.linalg.solve(np.vander(np.array(frames, dtype=float), 3, increasing=True), np.array(values, float)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="CPU preset (frame-primer is measured on CUDA only)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run, after one warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPUs are shared)")
    parser.add_argument("--cuda-crop", type=int, default=1024)
    parser.add_argument("--cuda-batch", type=int, default=4)
    parser.add_argument("--no-activations", action="store_true", help="skip the frame-primer saved-tensor count")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # child mode: one run, JSON out
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure_cpu(args.preset, args.one, args.crop, args.batch, args.steps, args.threads)))
        return

    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f} (other processes share these CPUs)")
    print(f"\n{args.preset} on CPU: crop {args.crop} frames, batch {args.batch}, median over {args.rounds} "
          f"alternating runs of the mean of {args.steps} steps (the trainer's step)")
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            child = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--preset", args.preset, "--crop", str(args.crop),
                 "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True,
            )
            rows[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"{'mode':>7} {'trainable':>11} {'frozen':>10} {'s/step':>8} {'steps/s':>8} {'peak RSS MB':>12} {'over model MB':>14}")
    seconds = {}
    for mode in MODES:
        seconds[mode] = statistics.median(row["step_seconds"] for row in rows[mode])
        peak = statistics.median(row["peak_rss_mb"] for row in rows[mode])
        over = statistics.median(row["over_model_mb"] for row in rows[mode])
        row = rows[mode][0]
        print(f"{mode:>7} {row['trainable']:>11,} {row['frozen']:>10,} {seconds[mode]:>8.3f} "
              f"{1 / seconds[mode]:>8.2f} {peak:>12.0f} {over:>14.0f}")
    print(f"frozen-encoder speed-up: {seconds['full'] / seconds['frozen']:.2f}x steps/s "
          f"(per-run step times full {[round(r['step_seconds'], 3) for r in rows['full']]}, "
          f"frozen {[round(r['step_seconds'], 3) for r in rows['frozen']]})")
    print(f"load average after the timed runs {os.getloadavg()[0]:.1f}")

    print("\ntraining-step FLOPs per example (fwd + bwd; matmuls and convolutions, FlopCounterMode):")
    print(f"{'preset':>13} {'frames':>6} {'full GFLOP':>11} {'frozen GFLOP':>13} {'full/frozen':>12}")
    for preset, frames in [(args.preset, args.crop)] + [("frame-primer", frames) for frames in (512, 1024, 2048)]:
        flops = {mode: step_flops(preset, frames, mode) for mode in MODES}
        print(f"{preset:>13} {frames:>6} {flops['full'] / 1e9:>11.1f} {flops['frozen'] / 1e9:>13.1f} "
              f"{flops['full'] / flops['frozen']:>12.2f}")

    if torch.cuda.is_available():
        print(f"\nframe-primer on {torch.cuda.get_device_name()}: bf16 autocast, crop {args.cuda_crop}, "
              f"batch {args.cuda_batch}, median over {args.rounds} alternating runs")
        results = measure_cuda("frame-primer", args.cuda_crop, args.cuda_batch, max(args.steps, 10), args.rounds)
        for mode in MODES:
            step_seconds = statistics.median(results[mode]["times"])
            print(f"{mode:>7} {step_seconds:>8.3f} s/step {1 / step_seconds:>8.2f} steps/s "
                  f"peak {results[mode]['peak_gib']:.2f} GiB")
        ratio = statistics.median(results["full"]["times"]) / statistics.median(results["frozen"]["times"])
        print(f"frozen-encoder speed-up on CUDA: {ratio:.2f}x steps/s")
    else:
        print("\nno CUDA device: frame-primer steps/s and GPU memory are not measured in this run")

    if args.no_activations:
        return
    # Saved tensors are per frame, per frame pair (attention) or fixed: a + b*T + c*T^2 exactly,
    # so three short crops on CPU give the size at any crop length.
    print("\nframe-primer, saved for backward per example (fp32), fit through 16/32/48 frames:")
    fits = {mode: quadratic_through([(frames, saved_for_backward_bytes("frame-primer", frames, mode))
                                     for frames in (16, 32, 48)]) for mode in MODES}
    print(f"{'frames':>6} {'full GiB':>9} {'frozen GiB':>11} {'frozen/full':>12}")
    for frames in (512, 1024, 2048):
        sizes = {mode: (a + b * frames + c * frames**2) / 2**30 for mode, (a, b, c) in fits.items()}
        print(f"{frames:>6} {sizes['full']:>9.2f} {sizes['frozen']:>11.2f} {sizes['frozen'] / sizes['full']:>12.2f}")


if __name__ == "__main__":
    main()
