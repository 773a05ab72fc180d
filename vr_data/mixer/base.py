"""The streaming mixer: PyTorch datasets of training batches built on the fly from a store.

Three kinds of examples, in configurable proportions (`MixerConfig.proportions`):

- `pair`: an aligned crop of a pair's mixture and instrumental;
- `augmented`: an instrumental crop (instrumental library and/or pairs' instrumentals) plus a
  vocal crop from the vocal library, mixed in the complex STFT domain (exact: the STFT is
  linear), with a random vocal gain, independent offsets, channel swaps, occasional mono, polarity
  flips, one vocal channel dropped now and then, and some vocal-free examples;
- `pretrain`: crops of the pretraining library (mixture = target, for the denoising objective).

A batch is a dict: `mixture`, `target` float32 `(batch, 2, bins, frames)` magnitudes (normalised
as `normalisation` says), `valid` bool `(batch, frames)` (False on padding past a track's end,
to be masked out of the loss), `kind` int64 `(batch,)` (index into `KINDS`), `scale` float32
`(batch,)` (what magnitudes were divided by), `index` int64 `(batch,)` (the example's index in
its epoch), and `normalisation` (a string). Two backends give the same batches: random access into
the Zarr arrays (`ZarrMixerDataset`) and sequential WebDataset streaming (`WdsMixerDataset`, in
`vr_data.mixer_wds`). `MixerLoader` wraps a DataLoader with exact mid-epoch resume.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vr_data.errors import VRDataError
from vr_data.mixing import crop_level_dbfs, mix_magnitudes
from vr_data.sampling import KINDS, CropCells, crop_cells, example_rng, plan_epoch

NORMALISATIONS = ("crop_max", "stats", "none")
SILENCE_RULES = ("resample", "count", "keep")


@dataclass(frozen=True)
class MixerConfig:
    """How examples are made. Defaults reproduce the seed fork's recipe (docs/mixer.md).

    Probabilities are per example; `vocal_gain_db` is a uniform range in dB applied to the vocal;
    `silence_dbfs` is the RMS level (dBFS, estimated from the STFT) under which a crop is
    near-silent; `silence_rule` says what happens then: `resample` (draw another crop, up to
    `max_resamples` times), `count` (keep it, count it) or `keep`.
    """

    crop_frames: int = 256
    batch_size: int = 16
    seed: int = 0
    split: str = "train"
    proportions: dict = field(default_factory=lambda: {"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
    instrumental_sources: tuple = ("instrumental", "pair")
    vocal_probability: float = 0.98
    swap_probability: float = 0.5
    vocal_channel_drop_probability: float = 0.025
    instrumental_only_probability: float = 0.025
    vocal_gain_db: tuple = (-6.0, 3.0)
    polarity_flip_probability: float = 0.5
    mono_probability: float = 0.02
    silence_dbfs: float = -50.0
    silence_rule: str = "resample"
    max_resamples: int = 4
    normalisation: str = "crop_max"
    stats_role: str = "pair"
    examples_per_epoch: int | None = None
    vocal_offset_step: int | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise VRDataError(None, f"normalisation must be one of {', '.join(NORMALISATIONS)}, not {self.normalisation!r}")
        if self.silence_rule not in SILENCE_RULES:
            raise VRDataError(None, f"silence_rule must be one of {', '.join(SILENCE_RULES)}, not {self.silence_rule!r}")
        if self.crop_frames < 1 or self.batch_size < 1:
            raise VRDataError(None, "crop_frames and batch_size must be positive")
        unknown = set(self.proportions) - set(KINDS)
        if unknown:
            raise VRDataError(None, f"unknown example kinds {sorted(unknown)}; kinds are {', '.join(KINDS)}")

    def to_dict(self) -> dict:
        record = asdict(self)
        record["instrumental_sources"] = list(self.instrumental_sources)
        record["vocal_gain_db"] = list(self.vocal_gain_db)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "MixerConfig":
        values = dict(record)
        for key in ("instrumental_sources", "vocal_gain_db"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class Library:
    """Crops of one kind come from these `(track, source)` entries; `frames` per entry."""

    entries: list
    frames: np.ndarray

    def cells(self, crop_frames: int) -> CropCells:
        return crop_cells(self.frames, crop_frames)


def build_libraries(tracks, config: MixerConfig) -> dict[str, Library]:
    """Group store tracks (of `config.split`) into the libraries each example kind draws from."""
    chosen = [t for t in tracks if t.split == config.split]

    def library(pairs):
        return Library(entries=pairs, frames=np.array([t.frames for t, _ in pairs], np.int64))

    instrumentals = [(t, "instrumental") for t in chosen if t.role == "instrumental" and "instrumental" in config.instrumental_sources]
    instrumentals += [(t, "instrumental") for t in chosen if t.role == "pair" and "pair" in config.instrumental_sources]
    return {
        "pair": library([(t, "mixture") for t in chosen if t.role == "pair"]),
        "augmented": library(instrumentals),
        "vocal": library([(t, "vocal") for t in chosen if t.role == "vocal"]),
        "pretrain": library([(t, "audio") for t in chosen if t.role == "pretrain"]),
    }


class _MixerBase(IterableDataset):
    """Position (epoch, batch), worker split and batch assembly shared by both backends."""

    def __init__(self, store_path: str | Path, config: MixerConfig, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        from vr_data.store import open_store

        self.store_path = Path(store_path)
        self.store = open_store(self.store_path)
        self.config = config
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0
        self.start_batch = 0
        self.bins = self.store.config.bins
        self.window_energy = _window_energy(self.store.config)
        self.libraries = build_libraries(self.store.tracks, config)
        if config.proportions.get("augmented", 0) > 0 and config.vocal_probability > 0 and not self.libraries["vocal"].entries:
            raise VRDataError(self.store_path, f"augmented mixes need vocals, but the store has no {config.split} vocal tracks")
        self._cells: dict[int, dict[str, CropCells]] = {}
        self.output_ring = 0  # > 0: reuse that many output buffers (MixerLoader(reuse_outputs=True))
        self.bin_scale = None
        if config.normalisation == "stats":
            from vr_data.stats.normalisation import load_normalisation

            mean, _ = load_normalisation(self.store_path, config.stats_role)
            # A per-bin factor common to mixture and target: the ideal mask is unchanged.
            self.bin_scale = np.exp(-mean).astype(np.float32)[None, :, None]  # (1, bins, 1)
        self._ring: dict[tuple, list] = {}
        self._ring_position = 0

    # -- position -------------------------------------------------------------------------------
    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at batch `batch` of epoch `epoch` (resume)."""
        self.epoch, self.start_batch = int(epoch), int(batch)

    def set_crop_frames(self, crop_frames: int) -> None:
        """Change the crop length (curriculum stage); nothing is rebuilt, only the plan."""
        self.config = replace(self.config, crop_frames=int(crop_frames))

    def cells(self) -> dict[str, CropCells]:
        crop = self.config.crop_frames
        if crop not in self._cells:
            self._cells[crop] = {kind: self.libraries[kind].cells(crop) for kind in KINDS}
        return self._cells[crop]

    def examples_per_epoch(self) -> int:
        """Configured, else enough that every crop cell of the most-used library comes up once."""
        if self.config.examples_per_epoch:
            return int(self.config.examples_per_epoch)
        cells = self.cells()
        counts = [len(cells[k]) / p for k, p in self.config.proportions.items() if p > 0 and len(cells[k])]
        return max(int(np.ceil(max(counts))) if counts else 0, self.config.batch_size * self.world_size)

    def batches_per_rank(self) -> int:
        return self.examples_per_epoch() // (self.config.batch_size * self.world_size)

    def __len__(self) -> int:
        return self.batches_per_rank()

    def plan(self, epoch: int):
        cells = self.cells()
        return plan_epoch(
            self.config.seed, epoch, self.config.proportions, {k: len(v) for k, v in cells.items()},
            self.examples_per_epoch(), self.config.batch_size, self.world_size,
        )

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    # -- batch assembly --------------------------------------------------------------------------
    def _new_buffers(self) -> dict[str, np.ndarray]:
        shape = (self.config.batch_size, self.config.crop_frames, 2, 2, self.bins)
        return {name: np.zeros(shape, np.float16) for name in ("a", "t", "v")}

    def positions(self, worker: int, num_workers: int):
        """(epoch, batch) pairs this worker makes: positions n0 + worker, n0 + worker + W, ... of
        the endless sequence, n0 = the start position. The DataLoader's round robin over workers
        then yields n0, n0 + 1, ... in order, whatever the number of workers."""
        per_epoch = self.batches_per_rank()
        if per_epoch == 0:
            raise VRDataError(self.store_path, f"an epoch has no batch: {self.examples_per_epoch()} examples "
                                               f"< batch {self.config.batch_size} x {self.world_size} ranks")
        position = self.epoch * per_epoch + self.start_batch + worker
        while True:
            yield divmod(position, per_epoch)
            position += max(1, num_workers)

    def _finish_batch(self, buffers, recipes, indices, epoch: int, k: int) -> dict:
        """Run the mixing kernel for every example (normalising as configured) into output tensors.

        In a DataLoader worker the outputs are allocated in shared memory, so handing the batch
        to the training process copies nothing.
        """
        size, frames = len(recipes), self.config.crop_frames
        mixture, target = self._outputs((size, 2, self.bins, frames))
        mixture_np, target_np = mixture.numpy(), target.numpy()
        valid = np.zeros((size, frames), bool)
        scale = np.ones(size, np.float32)
        kinds = np.zeros(size, np.int64)
        normalise = self.config.normalisation == "crop_max"
        for j, recipe in enumerate(recipes):
            _, _, peak = mix_magnitudes(
                buffers["a"][j], None if recipe["target_is_a"] else buffers["t"][j],
                buffers["v"][j] if recipe["vocal"] else None,
                vocal_gain=recipe["vocal_gain"], swap_a=recipe["swap_a"], swap_vocal=recipe["swap_vocal"],
                mono=recipe["mono"], out_mixture=mixture_np[j], out_target=target_np[j], normalise=normalise,
            )
            valid[j, : recipe["valid"]] = True
            kinds[j] = KINDS.index(recipe["kind"])
            if normalise and peak > 0:
                scale[j] = peak
            if self.bin_scale is not None:
                np.multiply(mixture_np[j], self.bin_scale, out=mixture_np[j])
                np.multiply(target_np[j], self.bin_scale, out=target_np[j])
        return {
            "mixture": mixture, "target": target,
            "valid": torch.from_numpy(valid), "kind": torch.from_numpy(kinds), "scale": torch.from_numpy(scale),
            "index": torch.as_tensor(np.asarray(indices, np.int64)),
            "normalisation": self.config.normalisation,
            "silent_crops": torch.as_tensor(sum(r["silent"] for r in recipes)),
            "epoch": epoch, "batch": k,
        }

    def _outputs(self, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Output tensors for one batch: fresh ones, or the next pair of a ring of reused buffers
        (allocated once, in shared memory in a worker, so sending a batch copies nothing)."""
        if not self.output_ring:
            return torch.empty(shape, dtype=torch.float32), torch.empty(shape, dtype=torch.float32)
        ring = self._ring.get(shape)
        if ring is None:
            shared = get_worker_info() is not None
            ring = self._ring[shape] = [
                tuple(torch.empty(shape, dtype=torch.float32).share_memory_() if shared else
                      torch.empty(shape, dtype=torch.float32) for _ in range(2))
                for _ in range(self.output_ring)
            ]
        self._ring_position += 1
        return ring[self._ring_position % len(ring)]

    def _recipe(self, rng: np.random.Generator, kind: str) -> dict:
        """The random choices of one example (everything but which crops)."""
        config = self.config
        swap_a = bool(rng.random() < config.swap_probability)
        mono = bool(rng.random() < config.mono_probability)
        instrumental_only = bool(rng.random() < config.instrumental_only_probability)
        recipe = {"kind": kind, "swap_a": swap_a, "mono": mono, "vocal": False, "swap_vocal": False,
                  "vocal_gain": (1.0, 1.0), "instrumental_only": instrumental_only, "silent": 0}
        if kind == "augmented" and not instrumental_only and rng.random() < config.vocal_probability:
            gain = 10.0 ** (rng.uniform(*config.vocal_gain_db) / 20.0)
            if rng.random() < config.polarity_flip_probability:
                gain = -gain
            gains = [gain, gain]
            if rng.random() < config.vocal_channel_drop_probability:
                gains[int(rng.integers(0, 2))] = 0.0
            recipe.update(vocal=True, vocal_gain=(gains[0], gains[1]),
                          swap_vocal=bool(rng.random() < config.swap_probability))
        return recipe

    def _is_silent(self, stored: np.ndarray) -> bool:
        return crop_level_dbfs(stored, self.window_energy, frame_step=8) < self.config.silence_dbfs


class ZarrMixerDataset(_MixerBase):
    """Random access into the store's Zarr arrays; batches are a pure function of
    (seed, epoch, rank, batch) - not of the number of DataLoader workers.

    A batch's crops are read together (`Store.read_many`: every read in flight at once); each
    example draws its recipe, its vocal and its silence resamples from separate random streams
    keyed by its index, so the order of reads never changes what an example is.
    """

    def __iter__(self):
        """Endless batches from (epoch, start_batch) on; this worker makes every W-th one."""
        worker, num_workers = self._worker()
        buffers = self._new_buffers()
        plan = None
        for epoch, k in self.positions(worker, num_workers):
            if plan is None or plan.epoch != epoch:
                plan = self.plan(epoch)
            recipes, indices = self.assemble(plan, k, buffers)
            yield self._finish_batch(buffers, recipes, indices, epoch, k)

    def example_batch(self, epoch: int, k: int) -> dict:
        """Batch `k` of this rank in `epoch`, computed directly (tests, previews)."""
        buffers = self._new_buffers()
        recipes, indices = self.assemble(self.plan(epoch), k, buffers)
        return self._finish_batch(buffers, recipes, indices, epoch, k)

    def assemble(self, plan, k: int, buffers: dict[str, np.ndarray]) -> tuple[list[dict], list[int]]:
        """Read the stored crops of batch `k` into `buffers` (`a`, `t`, `v`: float16
        `(batch, frames, 2, 2, bins)`); returns each example's recipe and its index."""
        indices = list(plan.example_indices(self.rank, k))
        cells = self.cells()
        recipes = []
        for index in indices:
            kind = KINDS[int(plan.kinds[index])]
            recipe = self._recipe(example_rng(self.config.seed, plan.epoch, index, _RECIPE), kind)
            cell = int(plan.cell[index])
            recipe["main"] = (int(cells[kind].track[cell]), int(cells[kind].start[cell]))
            recipe["resample_rng"] = example_rng(self.config.seed, plan.epoch, index, _RESAMPLE)
            if recipe["vocal"]:
                recipe["vocal_rng"] = example_rng(self.config.seed, plan.epoch, index, _VOCAL)
                recipe["vocal_pick"] = self._pick_vocal(recipe["vocal_rng"])
            recipes.append(recipe)
        self._read_batch(recipes, range(len(recipes)), buffers, main=True, vocal=True)
        self._apply_silence_rule(recipes, buffers)
        for j, recipe in enumerate(recipes):
            if recipe["kind"] == "pair" and recipe["instrumental_only"]:
                buffers["a"][j] = buffers["t"][j]
            if recipe["vocal"]:
                buffers["v"][j][recipe["valid"]:] = 0  # padding past the instrumental stays silent
            recipe["target_is_a"] = recipe["kind"] != "pair" or recipe["instrumental_only"]
            del recipe["resample_rng"]
            recipe.pop("vocal_rng", None)
        return recipes, indices

    def _pick_vocal(self, rng: np.random.Generator) -> tuple[int, int]:
        library = self.libraries["vocal"]
        track_index = int(rng.choice(len(library.entries), p=library.frames / library.frames.sum()))
        step = self.config.vocal_offset_step or self.store.geometry.chunk_frames
        last = max(int(library.frames[track_index]) - self.config.crop_frames, 0)
        return track_index, step * int(rng.integers(0, last // step + 1))

    def _read_batch(self, recipes, which, buffers, *, main: bool, vocal: bool) -> None:
        """Read the main crops and/or vocal crops of examples `which` in one `read_many`."""
        crop = self.config.crop_frames
        requests, targets = [], []
        for j in which:
            recipe = recipes[j]
            if main:
                library = self.libraries[recipe["kind"]]
                track_index, start = recipe["main"]
                track, source = library.entries[track_index]
                stop = min(start + crop, track.frames)
                recipe["valid"] = stop - start
                if recipe["kind"] == "pair":
                    requests += [(track, "mixture", start, stop), (track, "instrumental", start, stop)]
                    targets += [buffers["a"][j], buffers["t"][j]]
                else:
                    requests.append((track, source, start, stop))
                    targets.append(buffers["a"][j])
            if vocal and recipe["vocal"]:
                track_index, start = recipe["vocal_pick"]
                track, source = self.libraries["vocal"].entries[track_index]
                requests.append((track, source, start, min(start + crop, track.frames)))
                targets.append(buffers["v"][j])
        # Decode straight into the batch buffers; zero what lies past each track's end.
        self.store.read_many_into(requests, [out[: stop - start] for out, (_, _, start, stop) in zip(targets, requests)])
        for out, (_, _, start, stop) in zip(targets, requests):
            out[stop - start:] = 0

    def _apply_silence_rule(self, recipes, buffers) -> None:
        """Count near-silent crops; with `resample`, redraw them (up to `max_resamples` rounds,
        each round re-checking only the crops it redrew)."""
        rule = self.config.silence_rule
        if rule == "keep":
            return
        check_main = list(range(len(recipes)))
        check_vocal = [j for j, recipe in enumerate(recipes) if recipe["vocal"]]
        for attempt in range(self.config.max_resamples + 1):
            silent_main = [j for j in check_main if self._is_silent(
                buffers["t"][j] if recipes[j]["kind"] == "pair" else buffers["a"][j])]
            silent_vocal = [j for j in check_vocal if self._is_silent(buffers["v"][j])]
            for j in silent_main + silent_vocal:
                recipes[j]["silent"] += 1
            if rule == "count" or attempt == self.config.max_resamples or not (silent_main or silent_vocal):
                return
            for j in silent_main:
                cells = self.cells()[recipes[j]["kind"]]
                cell = int(recipes[j]["resample_rng"].integers(0, len(cells)))
                recipes[j]["main"] = (int(cells.track[cell]), int(cells.start[cell]))
            for j in silent_vocal:
                recipes[j]["vocal_pick"] = self._pick_vocal(recipes[j]["vocal_rng"])
            self._read_batch(recipes, silent_main, buffers, main=True, vocal=False)
            self._read_batch(recipes, silent_vocal, buffers, main=False, vocal=True)
            check_main, check_vocal = silent_main, silent_vocal


_RECIPE, _RESAMPLE, _VOCAL = 0, 1, 2


class MixerLoader:
    """A DataLoader over a mixer dataset that knows where it is: `state_dict()` after n batches,
    then `load_state_dict()` in a new process, continues with batch n + 1 exactly.

    Iterating yields one epoch (the rest of the current one); the next iteration continues with
    the next epoch on the same worker processes. Workers are started with `spawn` (tensorstore
    must not be forked once it has threads); a script that uses workers needs a
    `if __name__ == "__main__":` guard.

    `reuse_outputs=True` recycles a small ring of output buffers instead of allocating (and, from
    a worker, copying into shared memory) 2 x batch x 2 x bins x frames floats per batch: faster,
    but a batch's `mixture`/`target` are overwritten a few batches later, so the consumer must be
    done with a batch (e.g. have moved it to the GPU) before it asks for the next-but-two.
    """

    def __init__(self, dataset: _MixerBase, num_workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False,
                 reuse_outputs: bool = False):
        self.dataset = dataset
        # In flight per worker: prefetch_factor batches queued + one being made; the consumer holds one.
        dataset.output_ring = (prefetch_factor + 2 if num_workers else 2) if reuse_outputs else 0
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.epoch = dataset.epoch
        self.batch = dataset.start_batch
        self._batches = None

    def __len__(self) -> int:
        return self.dataset.batches_per_rank()

    def __iter__(self):
        """Yield the remaining batches of the current epoch."""
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        if self._batches is None:
            self.dataset.set_position(self.epoch, self.batch)
            loader = DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch_factor if self.num_workers else None,
                multiprocessing_context="spawn" if self.num_workers else None,
                worker_init_fn=_exit_without_finalising if self.num_workers else None,
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
        self._batches = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "config": self.dataset.config.to_dict(),
                "rank": self.dataset.rank, "world_size": self.dataset.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.dataset.world_size) != self.dataset.world_size:
            raise VRDataError(None, f"loader state was saved with world size {state['world_size']}, "
                                    f"this run has {self.dataset.world_size}")
        self.close()
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        saved = MixerConfig.from_dict(state["config"]) if "config" in state else self.dataset.config
        if saved.crop_frames != self.dataset.config.crop_frames:
            self.dataset.set_crop_frames(saved.crop_frames)

    def set_crop_frames(self, crop_frames: int) -> None:
        """Next curriculum stage: the following batches have `crop_frames` frames (new epoch plan;
        the position is kept as (epoch, batch) and clipped to the new epoch length)."""
        self.close()
        self.dataset.set_crop_frames(crop_frames)
        self.batch = min(self.batch, len(self))


def _exit_without_finalising(worker_id: int) -> None:
    """Workers leave with os._exit: interpreter finalisation would tear down tensorstore's
    threads out of order (std::terminate, SIGABRT), which the DataLoader reports as a crash."""
    atexit.register(os._exit, 0)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise VRDataError(None, f"rank {rank} outside world size {world_size}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _window_energy(stft_config) -> float:
    """sum(window**2) of the store's STFT window (periodic Hann: 3/8 n_fft)."""
    from vr_data.spectrogram import window_array

    return float(np.sum(np.asarray(window_array(stft_config), np.float64) ** 2))


