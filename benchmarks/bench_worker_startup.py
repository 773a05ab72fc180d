"""Worker start-up: how long a spawned DataLoader worker of the mixer takes before it can work.

Usage:
    python benchmarks/bench_worker_startup.py STORE [--repeats 5]
    VR_TREE=/path/to/other/checkout python -S benchmarks/bench_worker_startup.py STORE

`MixerLoader` starts its workers with `spawn`: each is a fresh interpreter that imports what the
pickled dataset needs (torch, numpy, numba, tensorstore and the mixer's modules) before it makes
its first batch. This measures, in this run:

- spawn + unpickle: from `Process.start()` to the child holding the unpickled `ZarrMixerDataset`
  (interpreter start, the imports, the dataset's state); the median of `--repeats` runs, with
  the part spent unpickling (the imports) shown apart;
- first batch: `MixerLoader(dataset, num_workers=2)` from the start of iteration to the first
  batch, against the same with `num_workers=0` (the first batch in-process).

`VR_TREE` puts another source tree first on `sys.path` (with `-S`, so that an editable install
of this checkout does not shadow it): that is how the pre-refactor tree was measured.
"""

from __future__ import annotations

import os
import sys

TREE = os.environ.get("VR_TREE")
if TREE:  # run against another checkout (see the docstring); this also runs in spawned children
    sys.path[:0] = [TREE, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "lib",
                                       f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402


def _child(queue, payload: bytes, started: float) -> None:
    """In the spawned process: unpickle the dataset (importing what it needs) and report."""
    import pickle

    arrived = time.time()
    dataset = pickle.loads(payload)
    import vr_data

    queue.put((arrived - started, time.time() - arrived, type(dataset).__module__, os.path.dirname(vr_data.__file__)))


def spawn_to_dataset(dataset, repeats: int) -> list[tuple[float, float, str, str]]:
    """(seconds to reach the child's code, seconds unpickling, dataset module, vr_data dir) per run."""
    import multiprocessing
    import pickle

    context = multiprocessing.get_context("spawn")
    payload = pickle.dumps(dataset)
    results = []
    for _ in range(repeats):
        queue = context.Queue()
        started = time.time()
        process = context.Process(target=_child, args=(queue, payload, started))
        process.start()
        results.append(queue.get(timeout=300))
        process.join()
    return results


def first_batch_seconds(store: str, workers: int) -> float:
    from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset

    loader = MixerLoader(ZarrMixerDataset(store, MixerConfig(crop_frames=64, batch_size=4, examples_per_epoch=64)),
                         num_workers=workers)
    started = time.perf_counter()
    next(iter(loader))
    seconds = time.perf_counter() - started
    loader.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import vr_data
    from vr_data.mixer import MixerConfig, ZarrMixerDataset

    dataset = ZarrMixerDataset(args.store, MixerConfig(crop_frames=64, batch_size=4, examples_per_epoch=64))
    runs = spawn_to_dataset(dataset, args.repeats)
    total = [reach + unpickle for reach, unpickle, _, _ in runs]
    unpickling = [unpickle for _, unpickle, _, _ in runs]
    print(f"tree: {os.path.dirname(os.path.dirname(vr_data.__file__))} (children import vr_data from {runs[0][3]})")
    print(f"spawned worker, start to unpickled dataset: median {statistics.median(total):.2f} s "
          f"(min {min(total):.2f}, max {max(total):.2f}; {args.repeats} runs), "
          f"of which unpickling (the imports) {statistics.median(unpickling):.2f} s")
    in_process = first_batch_seconds(args.store, 0)
    with_workers = first_batch_seconds(args.store, 2)
    print(f"first batch: {in_process:.2f} s in-process, {with_workers:.2f} s with 2 spawned workers")
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
