"""`MixerLoader`: a DataLoader over a mixer dataset that knows where it is, for exact resume."""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import weakref

from torch.utils.data import DataLoader

from vr_data.errors import VRDataError
from vr_data.mixer.base import MixerBase
from vr_data.mixer.config import RESUMABLE_CHANGES, MixerConfig, data_differences

# Every open loader's "closing" event, set at exit before multiprocessing's own exit handler (an
# earlier registration, so it runs later) ends the workers with SIGTERM (see `_start_worker`).
_CLOSING = weakref.WeakSet()
atexit.register(lambda: [event.set() for event in list(_CLOSING)])


class MixerLoader:
    """A DataLoader over a mixer dataset that knows where it is: `state_dict()` after n batches,
    then `load_state_dict()` in a new process, continues with batch n + 1 exactly, and with the
    same examples at another world size or number of workers (Zarr backend; `load_state_dict`).

    Iterating yields one epoch (the rest of the current one); the next iteration continues with
    the next epoch on the same worker processes. Workers are started with `spawn` (tensorstore
    must not be forked once it has threads); a script that uses workers needs a
    `if __name__ == "__main__":` guard.

    `reuse_outputs=True` recycles a small ring of output buffers instead of allocating (and, from
    a worker, copying into shared memory) 2 x batch x 2 x bins x frames floats per batch: faster,
    but a batch's `mixture`/`target` are overwritten a few batches later, so the consumer must be
    done with a batch (e.g. have moved it to the GPU) before it asks for the next-but-two.
    """

    def __init__(self, dataset: MixerBase, num_workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False,
                 reuse_outputs: bool = False, records: bool = False):
        self.dataset = dataset
        dataset.records = records  # batches carry `examples`: what made each example (the ledger)
        # In flight per worker: prefetch_factor batches queued + one being made; the consumer holds one.
        dataset.output_ring = (prefetch_factor + 2 if num_workers else 2) if reuse_outputs else 0
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.epoch = dataset.epoch
        self.batch = dataset.start_batch
        self._batches = None
        self._closing = None   # set when the workers may go: a SIGTERM then ends them (_start_worker)

    def __len__(self) -> int:
        return self.dataset.batches_per_rank()

    def __iter__(self):
        """Yield the remaining batches of the current epoch."""
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        if self._batches is None:
            self.dataset.set_position(self.epoch, self.batch)
            if self.num_workers:
                self._closing = multiprocessing.get_context("spawn").Event()
                _CLOSING.add(self._closing)
            loader = DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch_factor if self.num_workers else None,
                multiprocessing_context="spawn" if self.num_workers else None,
                worker_init_fn=functools.partial(_start_worker, self._closing) if self.num_workers else None,
            )
            self._batches = iter(loader)
        while self.batch < len(self):
            batch = next(self._batches)
            if (batch["epoch"], batch["batch"]) != (self.epoch, self.batch):
                raise RuntimeError(f"mixer out of step: got batch {batch['epoch']}/{batch['batch']}, "
                                   f"expected {self.epoch}/{self.batch}")
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0

    def close(self) -> None:
        """Stop the worker processes (they restart at the current position when needed)."""
        if self._closing is not None:
            self._closing.set()
        self._batches = None

    def examples_per_batch(self) -> int:
        """Examples of one batch over all ranks (`batch_size x world_size`)."""
        return self.dataset.config.batch_size * self.dataset.world_size

    def state_dict(self) -> dict:
        """Where the loader is, and what defines its data (JSON-serialisable).

        The position is global: `examples` of epoch `epoch` consumed by all ranks together (with
        `batch`, this rank's batches, kept for a resume at the same topology); `step_examples`
        fixes the epoch length; `world_size` and `workers` say who made them."""
        return {"epoch": self.epoch, "batch": self.batch, "examples": self.batch * self.examples_per_batch(),
                "step_examples": self.dataset.step_examples, "config": self.dataset.config.to_dict(),
                "store_id": self.dataset.store.identity(), "backend": type(self.dataset).__name__,
                "rank": self.dataset.rank, "world_size": self.dataset.world_size, "workers": self.num_workers}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off: the next batch starts at the first example of the
        epoch not yet consumed, at this loader's world size and workers.

        The world size (with the per-rank batch) and the number of workers may differ from the
        saved ones when the backend's examples do not depend on them (`topology_free`, the Zarr
        backend); the global batch of an optimizer step (`step_examples`) may not. A state from
        another data definition is refused (VRDataError naming every differing key): another
        store or backend, or a config that differs in anything but the crop length (which the
        curriculum changes; the saved one is taken). Keys absent from `state` are not checked."""
        dataset = self.dataset
        differences = {}
        if not dataset.topology_free:
            if "world_size" in state and state["world_size"] != dataset.world_size:
                differences["world_size"] = (state["world_size"], dataset.world_size)
            if "workers" in state and state["workers"] != self.num_workers:
                differences["workers"] = (state["workers"], self.num_workers)
        if "step_examples" in state and state["step_examples"] != dataset.step_examples:
            differences["step_examples"] = (state["step_examples"], dataset.step_examples)
        if "store_id" in state and state["store_id"] != dataset.store.identity():
            differences["store_id"] = (state["store_id"], dataset.store.identity())
        if "backend" in state and state["backend"] != type(dataset).__name__:
            differences["backend"] = (state["backend"], type(dataset).__name__)
        saved = MixerConfig.from_dict(state["config"]) if "config" in state else dataset.config
        config_differences = data_differences(saved, dataset.config)
        if (dataset.topology_free and "batch_size" in config_differences
                and state.get("world_size", dataset.world_size) != dataset.world_size):
            del config_differences["batch_size"]  # another world size's share of the same global batch
        differences.update(config_differences)
        if differences:
            listed = "; ".join(f"{key}: saved {before!r}, now {now!r}" for key, (before, now) in differences.items())
            raise VRDataError(None, f"loader state is from another data definition ({listed}); exact resume "
                                    f"needs the same store and mixer settings (only {', '.join(RESUMABLE_CHANGES)} "
                                    "may change" + ("" if dataset.topology_free else
                                                    "; this backend also needs the same ranks and workers") + ")")
        self.close()
        batch = int(state["batch"])
        same_split = (state.get("world_size", dataset.world_size) == dataset.world_size
                      and saved.batch_size == dataset.config.batch_size)
        if not same_split and "examples" not in state and "world_size" in state:
            # a state from before `examples` was recorded: its batches were batch_size x world_size
            state = {**state, "examples": batch * saved.batch_size * int(state["world_size"])}
        if "examples" in state and not same_split:  # another split of the same examples
            examples, per_batch = int(state["examples"]), self.examples_per_batch()
            if examples % per_batch:
                raise VRDataError(None, f"loader state is {examples} examples into epoch {state['epoch']}, not a "
                                        f"whole number of batches of {dataset.config.batch_size} x "
                                        f"{dataset.world_size} ranks")
            batch = examples // per_batch
        self.epoch, self.batch = int(state["epoch"]), batch
        if saved.crop_frames != dataset.config.crop_frames:
            dataset.set_crop_frames(saved.crop_frames)

    def set_crop_frames(self, crop_frames: int) -> None:
        """Next curriculum stage: the following batches have `crop_frames` frames (new epoch plan;
        the position is kept as (epoch, batch) and clipped to the new epoch length)."""
        self.close()
        self.dataset.set_crop_frames(crop_frames)
        self.batch = min(self.batch, len(self))


def _start_worker(closing, worker_id: int) -> None:
    """A worker's set-up.

    Workers leave with os._exit: interpreter finalisation would tear down tensorstore's threads
    out of order (std::terminate, SIGABRT), which the DataLoader reports as a crash. They ignore
    Ctrl-C, and SIGTERM until the loader is closing (`closing` set): a signal sent to the whole
    process group (a terminal's Ctrl-C, a cluster's preemption) leaves the decision to the main
    process, so a trainer can finish its step and save a checkpoint; the SIGTERM with which the
    DataLoader and multiprocessing end workers at shutdown still ends them.
    """
    atexit.register(os._exit, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_sigterm(number, frame) -> None:
        if closing.is_set():
            os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
