"""Model benchmark: training-step time and peak memory of `tiny` on CPU, FLOPs of `frame-primer`.

    .venv/bin/python benchmarks/bench_model.py [--crops 256 512 1024] [--batch 1] [--steps 3] [--threads 1]
        [--checkpointing] [--flop-frames 512 1024 2048] [--no-activations]

Each crop size runs in a fresh process, so its peak RSS (`ru_maxrss`) is that crop's alone;
"over model" is that peak minus the RSS right after building the model (activations kept for
backward, gradients, allocator slack). One step = forward + L1 loss + backward (no optimizer
update), timed after one warm-up step.
FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on a meta-device forward pass
(matmuls and convolutions only; see `vr_model.flops`); training is about 3x the forward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure_step(preset: str, crop_frames: int, batch: int, steps: int, threads: int, checkpointing: bool) -> dict:
    """Time forward + backward of `preset` on random crops; runs in the calling process."""
    import torch

    from vr_model import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset).train()
    model.gradient_checkpointing = checkpointing
    baseline = _rss_mb()
    mixture = torch.rand(batch, 2, model.config.bins + 1, crop_frames)
    target = torch.rand_like(mixture)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.l1_loss(model(mixture) * mixture, target)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if step > 0:  # the first step pays for oneDNN primitive creation
            times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "preset": preset, "crop_frames": crop_frames, "batch": batch, "threads": threads,
        "step_seconds": sum(times) / len(times), "min_step_seconds": min(times),
        "baseline_rss_mb": baseline, "peak_rss_mb": peak, "over_model_mb": peak - baseline,
    }


def saved_activation_bytes(preset: str, frames: int) -> int:
    """Bytes autograd keeps for backward in one training forward pass of one example (fp32).

    Counted with a saved-tensors hook, each storage once; parameters excluded.
    """
    import torch

    from vr_model import build_model

    torch.manual_seed(0)
    model = build_model(preset).train()
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


def quadratic_through(points: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(a, b, c) of a + b*T + c*T^2 through three (T, value) points."""
    import numpy as np

    frames, values = zip(*points)
    return tuple(np.linalg.solve(np.vander(np.array(frames, dtype=float), 3, increasing=True), np.array(values, float)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--flop-frames", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPUs are shared)")
    parser.add_argument("--checkpointing", action="store_true", help="recompute each level in backward")
    parser.add_argument("--no-activations", action="store_true", help="skip the frame-primer activation count")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one crop, JSON out
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(measure_step("tiny", args.one, args.batch, args.steps, args.threads, args.checkpointing)))
        return

    import torch

    from vr_model.flops import forward_flops
    from vr_model.presets import count_parameters

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"mean and min of {args.steps} steps after 1 warm-up; {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f} (other processes share these CPUs)")
    print(f"\ntiny ({count_parameters('tiny'):,} parameters): forward + backward on CPU"
          + (", gradient checkpointing per level" if args.checkpointing else ""))
    print(f"{'crop':>6} {'s/step':>8} {'min s':>8} {'frames/s':>9} {'peak RSS MB':>12} {'over model MB':>14} "
          f"{'fwd GFLOP':>10} {'GFLOP/s (3x fwd)':>17}")
    for crop in args.crops:
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(crop), "--batch", str(args.batch),
             "--steps", str(args.steps), "--threads", str(args.threads)]
            + (["--checkpointing"] if args.checkpointing else []),
            check=True, capture_output=True, text=True,
        )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        flops = forward_flops("tiny", crop, args.batch)
        print(f"{crop:>6} {row['step_seconds']:>8.2f} {row['min_step_seconds']:>8.2f} "
              f"{crop * args.batch / row['step_seconds']:>9.0f} {row['peak_rss_mb']:>12.0f} "
              f"{row['over_model_mb']:>14.0f} {flops / 1e9:>10.1f} {3 * flops / 1e9 / row['step_seconds']:>17.1f}")

    print(f"load average after the timed runs {os.getloadavg()[0]:.1f}")
    print(f"\nframe-primer ({count_parameters('frame-primer'):,} parameters): forward FLOPs per example "
          "(FlopCounterMode, meta device)")
    print(f"{'frames':>6} {'seconds':>8} {'fwd GFLOP':>10} {'train step ~3x GFLOP':>21}")
    for frames in args.flop_frames:
        flops = forward_flops("frame-primer", frames)
        print(f"{frames:>6} {frames * 1024 / 44100:>8.1f} {flops / 1e9:>10.1f} {3 * flops / 1e9:>21.1f}")

    if args.no_activations:
        return
    # Every saved tensor is per frame, per frame pair (attention) or fixed, so the size is
    # exactly a + b*T + c*T^2: three short crops on CPU give it for any crop length.
    points = [(frames, saved_activation_bytes("frame-primer", frames)) for frames in (16, 32, 48)]
    a, b, c = quadratic_through(points)
    print("\nframe-primer saved activations per example for backward (fp32, no checkpointing): "
          f"measured {', '.join(f'{t} frames {v / 2**20:.0f} MiB' for t, v in points)}; "
          "a + bT + cT^2 through them gives")
    print(f"{'frames':>6} {'GiB':>8}")
    for frames in args.flop_frames:
        print(f"{frames:>6} {(a + b * frames + c * frames**2) / 2**30:>8.2f}")


if __name__ == "__main__":
    main()