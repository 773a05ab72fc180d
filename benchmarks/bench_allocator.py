"""Allocator benchmark: the data workers under glibc's malloc defaults and under the fast
allocator (pipelines/allocator.py), in one run.

    python benchmarks/bench_allocator.py [--tracks 4] [--seconds 30] [--batches 30] [--rounds 2]

Builds a small store from synthetic music (`--tracks` instrumentals and vocals), then, in child
processes that take turns with each environment (`shipped`: glibc defaults, as before issue
12; `fast`: what `vrtrain`/`vrdata` choose now), measures:

- the mixer through `MixerLoader` with one spawned DataLoader worker (augmented mixes, crop
  256 frames, batch 16, outputs reused): examples/s after the first batch;
- `build_store` on a dask LocalCluster of one worker (`pipelines.common.dask_executor`):
  audio-seconds per second, after one untimed build that warms the worker.

Each child also reports which allocator its worker process runs (read from the worker's
memory map), so the line shows that the workers inherit the choice. The training step itself
is measured by `bench_model.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.allocator import fast_allocator_environ, find_tcmalloc, shipped_environ  # noqa: E402


def environments() -> dict[str, dict[str, str]]:
    """shipped (glibc defaults), fast (what vrtrain/vrdata choose) and, where tcmalloc is the
    choice, glibc's tunables too (the fallback)."""
    fresh = shipped_environ(os.environ)
    clean = {key: value for key, value in fresh.items() if key not in ("VR_MALLOC", "VR_MALLOC_ACTIVE")}
    envs = {"shipped": fresh, "fast": fast_allocator_environ(clean, find_tcmalloc())[1]}
    if envs["fast"]["VR_MALLOC_ACTIVE"] == "tcmalloc":
        envs["tunables"] = fast_allocator_environ({**clean, "VR_MALLOC": "glibc"}, None)[1]
    return envs


def worker_allocator(pid: int) -> str:
    """The malloc a process runs, from the libraries mapped into it."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "?"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        environ = b""
    return "glibc-tunables" if b"glibc.malloc.mmap_max=0" in environ else "glibc"


def spawned_workers(parent: int) -> list[int]:
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                workers.append(int(entry.name))
        except OSError:
            continue
    return workers


def measure_mixer(store: Path, batches: int) -> dict:
    from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset

    config = MixerConfig(crop_frames=256, batch_size=16, seed=0, proportions={"augmented": 1.0},
                         examples_per_epoch=16 * (batches + 10))
    loader = MixerLoader(ZarrMixerDataset(store, config), num_workers=1, reuse_outputs=True)
    batches_iter = iter(loader)
    next(batches_iter)  # worker start-up and the first batch are not timed
    allocator = ",".join(worker_allocator(pid) for pid in spawned_workers(os.getpid())) or "?"
    started = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    seconds = time.perf_counter() - started
    loader.close()
    return {"examples_per_second": batches * 16 / seconds, "worker_allocator": allocator}


def measure_build(manifest_path: Path, out: Path) -> dict:
    from pipelines.allocator import allocator_in_use
    from pipelines.common import dask_executor
    from vr_data.catalog.manifest import read_manifest
    from vr_data.store.build import build_store

    manifest = read_manifest(manifest_path)
    seconds_of_audio = sum(item.duration for item in manifest.items)
    with dask_executor(1, None) as executor:
        allocator = executor.submit(allocator_in_use).result()
        build_store([manifest], out / "warm", executor=executor)  # imports, FFT plans, numba caches
        started = time.perf_counter()
        build_store([manifest], out / "timed", executor=executor)
        seconds = time.perf_counter() - started
    return {"audio_seconds_per_second": seconds_of_audio / seconds, "worker_allocator": allocator}


def child(args) -> None:
    if args.child == "mixer":
        print(json.dumps(measure_mixer(Path(args.store), args.batches)))
    else:
        print(json.dumps(measure_build(Path(args.manifest), Path(args.out))))


def run_child(kind: str, env: dict[str, str], args, work: Path, index: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--batches", str(args.batches),
               "--store", str(work / "store"), "--manifest", str(work / "instrumentals.jsonl"),
               "--out", str(work / f"build_{index}")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("mixer", "build"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from vr_data.audio import write_audio
    from vr_data.catalog.manifest import read_manifest, write_manifest
    from vr_data.catalog.scan import ScanOptions, scan
    from vr_data.store.build import build_store
    from vr_data.testing.synth import music_like

    envs = environments()
    with tempfile.TemporaryDirectory(prefix="bench_allocator_") as scratch:
        work = Path(scratch)
        manifests = []
        for layout, style, offset in (("instrumentals", "mix", 0), ("vocals", "sparse", 100)):
            for index in range(args.tracks):
                write_audio(work / layout / f"{layout}_{index:02d}.wav",
                            music_like(args.seconds, 44100, offset + index, style), 44100)
            result = scan(work / layout, ScanOptions(layout=layout, valid_fraction=0.0))
            manifests.append(read_manifest(write_manifest(work / f"{layout}.jsonl", result.manifest)))
        build_store(manifests, work / "store")
        print(f"{args.tracks} instrumentals + {args.tracks} vocals x {args.seconds:g} s; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; fast allocator here: "
              f"{envs['fast'].get('VR_MALLOC_ACTIVE')}; {args.rounds} rounds, environments taking turns")
        results: dict[tuple[str, str], list[dict]] = {}
        index = 0
        for _ in range(args.rounds):
            for kind in ("mixer", "build"):
                for name, env in envs.items():
                    index += 1
                    results.setdefault((kind, name), []).append(run_child(kind, env, args, work, index))
        names = list(envs)
        print(f"\n{'workload':<50}" + "".join(f"{name:>9}" for name in names) + f"{'x fast':>7}  worker allocators")
        for kind, key, label in (
            ("mixer", "examples_per_second", "mixer, 1 spawned DataLoader worker (ex/s)"),
            ("build", "audio_seconds_per_second", "build_store, dask cluster of 1 (audio-s/s)"),
        ):
            best = {name: max(run[key] for run in results[(kind, name)]) for name in envs}
            workers = {name: results[(kind, name)][0]["worker_allocator"] for name in envs}
            print(f"{label:<50}" + "".join(f"{best[name]:>9.1f}" for name in names)
                  + f"{best['fast'] / best['shipped']:>7.2f}  " + " / ".join(workers[name] for name in names))
        print(f"(best of {args.rounds} rounds each; load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
