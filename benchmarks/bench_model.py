"""Model benchmark: the CPU training step as shipped against the new default, in one run; the
frame-primer step on a GPU.

    python benchmarks/bench_model.py [--crops 256] [--batch 4] [--steps 3] [--rounds 2] [--threads 1]
        [--variants shipped,tcmalloc,tunables,default] [--compile] [--profile] [--checkpointing]
        [--flop-frames 512 1024 2048] [--no-activations]
    python benchmarks/bench_model.py --device cuda [--gpu-frames 512 1024 2048] [--gpu-batch 1] [--gpu-preset P]

CPU section (no `--device`): `tiny`, one step = forward + L1 loss + backward (no optimizer
update), timed after one warm-up step. Each variant runs in a fresh process with its own
environment, and the variants take turns (`--rounds`), so load from other processes on a
shared machine falls on all of them alike:

- `shipped`: glibc's malloc defaults and the code paths as first shipped
  (`vr_model.network.layers.set_fast_paths(False)`), i.e. the step before issue 12;
- `tcmalloc`, `tunables`: the shipped code under tcmalloc / glibc's tunables (the allocator
  alone);
- `default`: what `vrtrain` runs now: the fast allocator (pipelines/allocator.py) and the fast
  code paths;
- `compiled` (`--compile`): the default plus `torch.compile` (inductor); compile time apart.

Wall s/step is what a user waits; CPU s/step (user + system time of the process) is the
work, which other jobs on a shared machine disturb far less. GFLOP/s = the training step's
matmul and convolution FLOPs (FlopCounterMode, `vr_model.network.flops.train_step_flops`) per CPU
second, against the peak of a 2048^3 float32 matmul measured in this run with the same threads.
`--profile` adds where the CPU time goes per operator kind (torch.profiler), per variant.

GPU section (`--device cuda`; `--device cpu` runs the same code on the CPU, on `tiny` at 16 and
32 frames: bfloat16 is emulated on CPUs without it, 337 s per frame-primer step here):
`frame-primer` under bfloat16 autocast with AdamW, with and without gradient checkpointing:
s/step, examples/s, peak memory, and model FLOPs utilisation = train-step FLOPs / time /
the device's bfloat16 matmul peak measured in this run. Then the share of the float32
`(B, H, T, T)` attention-score tensors in the memory saved for backward and in device time.
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

from pipelines.allocator import (  # noqa: E402
    allocator_in_use, fast_allocator_environ, find_tcmalloc, shipped_environ,
)

VARIANTS = {
    # name: (allocator environment, fast code paths, torch.compile)
    "shipped": ("shipped", False, False),
    "tcmalloc": ("tcmalloc", False, False),
    "tunables": ("glibc", False, False),
    "default": ("auto", True, False),
    "compiled": ("auto", True, True),
}
LABELS = {
    "shipped": "glibc malloc, shipped code",
    "tcmalloc": "shipped code + tcmalloc",
    "tunables": "shipped code + glibc tunables",
    "default": "fast allocator + fast paths (vrtrain now)",
    "compiled": "default + torch.compile",
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _cpu_seconds() -> tuple[float, float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def variant_environ(variant: str) -> dict[str, str]:
    """The environment a variant's child process starts with."""
    choice = VARIANTS[variant][0]
    if choice == "shipped":
        return shipped_environ(os.environ)
    base = dict(shipped_environ(os.environ))
    del base["VR_MALLOC_ACTIVE"]
    base["VR_MALLOC"] = choice
    return fast_allocator_environ(base, find_tcmalloc())[1]


# -- the CPU step, in a child process ----------------------------------------------------------

def operator_kind(names: list[str]) -> str:
    """The kind of work a profiler event does, from its name and its parents' (outermost first)."""
    for name in names:
        lowered = name.lower()
        if "framenorm" in lowered:
            return "FrameNorm"
        if "conv" in lowered:
            return "convolutions"
        if "softmax" in lowered:
            return "softmax"
        if any(key in lowered for key in ("aten::mm", "aten::bmm", "addmm", "matmul", "baddbmm", "aten::linear",
                                           "mmbackward", "bmmbackward", "linear")):
            return "matmuls (attention, feed-forward)"
        if "gelu" in lowered:
            return "GELU"
        if "layer_norm" in lowered or "layernorm" in lowered:
            return "LayerNorm (primers)"
        if any(key in lowered for key in ("cat", "upsample", "interpolate", "pad", "copy", "clone", "contiguous",
                                           "fill", "zero", "slice", "index", "stack")):
            return "copies, cat, interpolate, fills"
    return "other elementwise and reductions"


def profile_kinds(step) -> dict[str, float]:
    """CPU seconds per operator kind over one call of `step` (self time of every event)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds: dict[str, float] = {}
    for event in prof.events():
        self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        chain, parent = [], event
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        kind = operator_kind(list(reversed(chain)))
        kinds[kind] = kinds.get(kind, 0.0) + self_us / 1e6
    return kinds


def measure_step(preset: str, crop_frames: int, batch: int, steps: int, threads: int, checkpointing: bool,
                 fast: bool, compiled: bool, profile: bool) -> dict:
    """Time forward + backward of `preset` on fixed random crops; runs in the calling process."""
    import torch

    from vr_model import build_model
    from vr_model.network.layers import set_fast_paths

    torch.set_num_threads(threads)
    set_fast_paths(fast)
    torch.manual_seed(0)
    model = build_model(preset).train()
    model.gradient_checkpointing = checkpointing
    baseline = _rss_mb()
    generator = torch.Generator().manual_seed(1)
    mixture = torch.rand(batch, 2, model.config.bins + 1, crop_frames, generator=generator)
    target = mixture * torch.rand(mixture.shape, generator=generator)
    forward = torch.compile(model) if compiled else model

    def step() -> float:
        loss = torch.nn.functional.l1_loss(forward(mixture) * mixture, target)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    started = time.perf_counter()
    loss = step()  # the first step pays for oneDNN primitive creation (and compilation)
    first_seconds = time.perf_counter() - started
    walls, cpus, systems, faults = [], [], [], []
    for _ in range(steps):
        user0, sys0, faults0 = _cpu_seconds()
        started = time.perf_counter()
        step()
        walls.append(time.perf_counter() - started)
        user1, sys1, faults1 = _cpu_seconds()
        cpus.append(user1 - user0 + sys1 - sys0)
        systems.append(sys1 - sys0)
        faults.append(faults1 - faults0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "preset": preset, "crop_frames": crop_frames, "batch": batch, "threads": threads, "loss": loss,
        "allocator": allocator_in_use(), "first_step_seconds": first_seconds,
        "walls": walls, "cpus": cpus, "system_seconds": sum(systems) / len(systems),
        "page_faults": sum(faults) / len(faults),
        "baseline_rss_mb": baseline, "peak_rss_mb": peak, "over_model_mb": peak - baseline,
    }
    if profile:
        result["kinds"] = profile_kinds(step)
    return result


def run_child(variant: str, crop: int, args) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--one", str(crop), "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    command += ["--checkpointing"] if args.checkpointing else []
    command += ["--profile"] if args.profile else []
    child = subprocess.run(command, env=variant_environ(variant), capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise SystemExit(f"{variant} at {crop} frames failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP per CPU second of a size^3 matmul, best of `repeats` (CPU time: load-proof)."""
    import torch

    torch.set_num_threads(threads)
    left, right = torch.randn(size, size), torch.randn(size, size)
    left @ right
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        left @ right
        best = min(best, (time.process_time() - started) / threads)
    return 2 * size**3 / best / 1e9


def cpu_section(args) -> None:
    import torch

    from vr_model.network.flops import forward_flops, train_step_flops
    from vr_model.network.presets import count_parameters

    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "tcmalloc" in variants and find_tcmalloc() is None:
        print("no tcmalloc library here: the tcmalloc variant is skipped")
        variants.remove("tcmalloc")
    if args.compile and "compiled" not in variants:
        variants.append("compiled")
    peak = matmul_peak_gflops(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.steps} timed steps "
          f"after 1 warm-up, {args.rounds} round(s) per variant taking turns; {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"peak: {peak:.1f} GFLOP/s (float32 2048^3 matmul, per CPU second, measured now)")
    print(f"\ntiny ({count_parameters('tiny'):,} parameters): forward + backward on CPU"
          + (", gradient checkpointing per level" if args.checkpointing else ""))
    for crop in args.crops:
        train_flops = train_step_flops("tiny", crop, args.batch)
        rows: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name in variants:
                rows[name].append(run_child(name, crop, args))
        print(f"\n{crop} frames x batch {args.batch}: {train_flops / 1e9:.1f} GFLOP per step "
              f"(forward {forward_flops('tiny', crop, args.batch) / 1e9:.1f})")
        print("  " + "; ".join(f"{name}: {LABELS[name]}" for name in variants))
        print(f"{'variant':<10} {'wall s/step':>11} {'min':>6} {'CPU s/step':>10} {'of it sys':>9} {'ex/s':>5} "
              f"{'x wall':>6} {'x CPU':>6}")
        summary = {}
        for name in variants:
            runs = rows[name]
            walls = [wall for run in runs for wall in run["walls"]]
            cpus = [cpu for run in runs for cpu in run["cpus"]]
            summary[name] = (sum(walls) / len(walls), min(walls), sum(cpus) / len(cpus), min(cpus),
                             sum(run["system_seconds"] for run in runs) / len(runs))
        wall0, _, cpu0, _, _ = summary[variants[0]]
        for name in variants:
            wall, wall_min, cpu, _, system = summary[name]
            print(f"{name:<10} {wall:>11.2f} {wall_min:>6.2f} {cpu:>10.2f} {system:>9.2f} {args.batch / wall:>5.2f} "
                  f"{wall0 / wall:>6.2f} {cpu0 / cpu:>6.2f}")
        print(f"{'variant':<10} {'GFLOP/s':>8} {'% peak':>7} {'peak RSS MB':>12}  first-step loss")
        loss0 = rows[variants[0]][0]["loss"]
        for name in variants:
            cpu_min = summary[name][3]
            gflops = train_flops / 1e9 / cpu_min
            loss = rows[name][0]["loss"]
            same = "" if name == variants[0] else f" (rel. diff {abs(loss / loss0 - 1):.0e})"
            print(f"{name:<10} {gflops:>8.1f} {100 * gflops / peak:>7.1f} "
                  f"{max(run['peak_rss_mb'] for run in rows[name]):>12.0f}  {loss:.9f}{same}")
            if name == "compiled":
                print(f"{'':<10} first step (compilation included) {rows[name][0]['first_step_seconds']:.0f} s")
        print("allocators in the children: " + ", ".join(f"{name} {rows[name][0]['allocator']}" for name in variants))
        if args.profile:
            print_profile(variants, rows)
    print(f"\nload average after the timed runs {os.getloadavg()[0]:.1f}")


def print_profile(variants: list[str], rows: dict[str, list[dict]]) -> None:
    totals = {name: rows[name][0]["kinds"] for name in variants}

    def share(name: str, kind: str) -> float:
        return 100 * totals[name].get(kind, 0.0) / sum(totals[name].values())

    kinds = sorted({kind for kind_map in totals.values() for kind in kind_map},
                   key=lambda kind: -totals[variants[0]].get(kind, 0.0))
    print("\none profiled step per variant: seconds of self time per operator kind (torch.profiler measures\n"
          "wall time per operator, so other jobs inflate it; compare the shares)")
    print(f"{'kind':<36}" + "".join(f"{name:>12}" for name in variants))
    for kind in kinds:
        print(f"{kind:<36}" + "".join(f"{totals[name].get(kind, 0.0):>7.2f} {share(name, kind):>3.0f}%"
                                       for name in variants))
    print(f"{'total':<36}" + "".join(f"{sum(totals[name].values()):>12.2f}" for name in variants))


# -- FLOPs and activation memory of frame-primer -----------------------------------------------

def is_score_shape(shape: tuple[int, ...], frames: int, heads: int) -> bool:
    """An attention-score shape: `(B, H, T, T)` or `(B*H, T, T)` (feature maps `(B, C, F, T)`
    with F == T are not: their channel count is not a multiple of the heads here)."""
    return len(shape) >= 3 and shape[-2:] == (frames, frames) and shape[-3] % heads == 0 and (
        len(shape) == 3 or shape[-3] == heads)


def saved_activation_bytes(preset: str, frames: int, autocast: bool = False) -> tuple[int, int]:
    """(all, attention scores) bytes autograd keeps for backward in one training forward pass of
    one example on the CPU; scores are the saved tensors shaped `(..., frames, frames)`.

    Counted with a saved-tensors hook, each storage once; parameters excluded. With `autocast`,
    under CPU bfloat16 autocast (convolutions and matmuls in bfloat16, as on a GPU).
    """
    import contextlib

    import torch

    from vr_model import build_model

    torch.manual_seed(0)
    model = build_model(preset).train()
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, tuple[int, bool]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            score = is_score_shape(tuple(tensor.shape), frames, model.config.num_heads)
            storages[storage.data_ptr()] = (storage.nbytes(), score or storages.get(storage.data_ptr(), (0, False))[1])
        return tensor

    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), context:
        model(torch.rand(1, 2, model.config.bins + 1, frames))
    return sum(size for size, _ in storages.values()), sum(size for size, score in storages.values() if score)


def quadratic_through(points: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(a, b, c) of a + b*T + c*T^2 through three (T, value) points."""
    import numpy as np

    frames, values = zip(*points)
    return tuple(np.linalg.solve(np.vander(np.array(frames, dtype=float), 3, increasing=True), np.array(values, float)))


def flops_and_memory_section(args) -> None:
    from vr_model.network.flops import forward_flops, train_step_flops
    from vr_model.network.presets import count_parameters

    print(f"\nframe-primer ({count_parameters('frame-primer'):,} parameters): FLOPs per example "
          "(FlopCounterMode, meta device)")
    print(f"{'frames':>6} {'seconds':>8} {'fwd GFLOP':>10} {'train step GFLOP':>17}")
    for frames in args.flop_frames:
        print(f"{frames:>6} {frames * 1024 / 44100:>8.1f} {forward_flops('frame-primer', frames) / 1e9:>10.1f} "
              f"{train_step_flops('frame-primer', frames) / 1e9:>17.1f}")
    if args.no_activations:
        return
    # Every saved tensor is per frame, per frame pair (attention) or fixed, so the size is
    # exactly a + b*T + c*T^2: three short crops on CPU give it for any crop length.
    for autocast in (False, True):
        # Not powers of two: no bin count or head width equals them, so shapes tell scores apart.
        points = [(frames, saved_activation_bytes("frame-primer", frames, autocast)) for frames in (20, 36, 52)]
        total = quadratic_through([(frames, sizes[0]) for frames, sizes in points])
        scores = quadratic_through([(frames, sizes[1]) for frames, sizes in points])
        label = "bfloat16 autocast" if autocast else "float32"
        print(f"\nframe-primer saved activations per example for backward ({label}, no checkpointing); "
              f"measured {', '.join(f'{t} frames {v[0] / 2**20:.0f} MiB' for t, v in points)}; "
              "a + bT + cT^2 through them gives")
        print(f"{'frames':>6} {'GiB':>8} {'(B,H,T,T) scores GiB':>21} {'share':>6}")
        for frames in args.flop_frames:
            whole = sum(coefficient * frames**power for power, coefficient in enumerate(total))
            part = sum(coefficient * frames**power for power, coefficient in enumerate(scores))
            print(f"{frames:>6} {whole / 2**30:>8.2f} {part / 2**30:>21.2f} {100 * part / whole:>5.0f}%")


# -- the GPU step ------------------------------------------------------------------------------

def device_bf16_peak_tflops(device, size: int) -> float:
    """bfloat16 TFLOP/s of a size^3 matmul on `device`, best of 5."""
    import torch

    left = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    right = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(6):
        _synchronize(device)
        started = time.perf_counter()
        left @ right
        _synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e12


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_step(preset: str, frames: int, batch: int, steps: int, checkpointing: bool, device) -> dict:
    """`preset` on `device`: bfloat16 autocast forward + backward + fused AdamW, timed."""
    import torch

    from vr_model import build_model

    torch.manual_seed(0)
    model = build_model(preset).to(device).train()
    model.gradient_checkpointing = checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    mixture = torch.rand(batch, 2, model.config.bins + 1, frames, device=device)
    target = mixture * torch.rand_like(mixture)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.l1_loss(model(mixture).float() * mixture, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        step()
        step()
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"oom": False, "seconds": seconds, "peak_bytes": peak}


def score_time_share(preset: str, frames: int, batch: int, device) -> tuple[float, float]:
    """(seconds in ops on (..., T, T) tensors, all seconds) of one autocast training step,
    device time on CUDA, CPU time elsewhere (torch.profiler with input shapes)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vr_model import build_model

    torch.manual_seed(0)
    model = build_model(preset).to(device).train()
    mixture = torch.rand(batch, 2, model.config.bins + 1, frames, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.l1_loss(model(mixture).float() * mixture, mixture)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        _synchronize(device)
    score = whole = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        spent = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        whole += spent
        heads = model.config.num_heads
        if any(is_score_shape(tuple(shape), frames, heads) for shape in event.input_shapes or []):
            score += spent
    return score, whole


def device_section(args) -> None:
    import torch

    from vr_model.network.flops import train_step_flops

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(args.threads)
    frames_list = args.gpu_frames or ([512, 1024, 2048] if on_gpu else [16, 32])
    # bfloat16 on a CPU without bfloat16 instructions is emulated: frame-primer took 337 s per
    # 16-frame step here, so the CPU check runs the same code on `tiny` unless told otherwise.
    preset = args.gpu_preset or ("frame-primer" if on_gpu else "tiny")
    peak = device_bf16_peak_tflops(device, 8192 if on_gpu else 512)
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__}, {name}; bfloat16 matmul peak measured now: {peak:.3g} TFLOP/s")
    if not on_gpu:
        print("(--device cpu exercises the GPU code path at small sizes; these are not GPU figures)")
    print(f"\n{preset}, batch {args.gpu_batch}, bfloat16 autocast, AdamW (fused on CUDA); {args.gpu_steps} timed steps "
          "after 2 warm-ups")
    print(f"{'frames':>6} {'checkpointing':>13} {'s/step':>8} {'examples/s':>10} {'peak GiB':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6}")
    for frames in frames_list:
        flops = train_step_flops(preset, frames, args.gpu_batch)
        for checkpointing in (False, True):
            result = device_step(preset, frames, args.gpu_batch, args.gpu_steps, checkpointing, device)
            if result["oom"]:
                print(f"{frames:>6} {str(checkpointing):>13} {'out of memory':>8}")
                continue
            rate = flops / result["seconds"] / 1e12
            memory = f"{result['peak_bytes'] / 2**30:>9.2f}" if result["peak_bytes"] is not None else f"{'-':>9}"
            print(f"{frames:>6} {str(checkpointing):>13} {result['seconds']:>8.3f} "
                  f"{args.gpu_batch / result['seconds']:>10.2f} {memory} {rate:>8.3g} {100 * rate / peak:>5.1f}%")
    frames = max(frames_list)
    score, whole = score_time_share(preset, frames, args.gpu_batch, device)
    print(f"\nat {frames} frames: ops on (..., T, T) attention-score tensors took {score:.3f} of {whole:.3f} "
          f"{'device' if on_gpu else 'CPU'} seconds of a step ({100 * score / whole:.0f}%)")
    total, scores = saved_activation_bytes_on(preset, device, frames, args.gpu_batch)
    print(f"saved for backward: {total / 2**30:.2f} GiB, of which (..., T, T) scores {scores / 2**30:.2f} GiB "
          f"({100 * scores / total:.0f}%)")


def saved_activation_bytes_on(preset: str, device, frames: int, batch: int) -> tuple[int, int]:
    """(all, scores) bytes saved for backward by one autocast forward of `preset` on `device`."""
    import torch

    from vr_model import build_model

    torch.manual_seed(0)
    model = build_model(preset).to(device).train()
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, tuple[int, bool]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            score = is_score_shape(tuple(tensor.shape), frames, model.config.num_heads)
            storages[storage.data_ptr()] = (storage.nbytes(), score or storages.get(storage.data_ptr(), (0, False))[1])
        return tensor

    mixture = torch.rand(batch, 2, model.config.bins + 1, frames, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast(device.type, dtype=torch.bfloat16):
        model(mixture)
    return sum(size for size, _ in storages.values()), sum(size for size, score in storages.values() if score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, nargs="+", default=[256])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="turns each variant takes (load falls on all alike)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPUs are shared)")
    parser.add_argument("--variants", default="shipped,tcmalloc,tunables,default",
                        help=f"comma-separated, first is the reference: {', '.join(VARIANTS)}")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant (slow to compile)")
    parser.add_argument("--profile", action="store_true", help="CPU time per operator kind, per variant")
    parser.add_argument("--checkpointing", action="store_true", help="recompute each level in backward")
    parser.add_argument("--flop-frames", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--no-activations", action="store_true", help="skip the frame-primer activation count")
    parser.add_argument("--device", help="cuda (or cpu): the frame-primer step section on that device")
    parser.add_argument("--gpu-frames", type=int, nargs="+", help="frames for --device (cuda: 512 1024 2048)")
    parser.add_argument("--gpu-batch", type=int, default=1)
    parser.add_argument("--gpu-preset", help="model for --device (default: frame-primer on cuda, tiny on cpu)")
    parser.add_argument("--gpu-steps", type=int, default=5)
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one crop, JSON out
    args = parser.parse_args()

    if args.child is not None:
        _, fast, compiled = VARIANTS[args.child]
        print(json.dumps(measure_step("tiny", args.one, args.batch, args.steps, args.threads, args.checkpointing,
                                      fast, compiled, args.profile)))
        return
    if args.device:
        device_section(args)
        return
    cpu_section(args)
    flops_and_memory_section(args)


if __name__ == "__main__":
    main()
