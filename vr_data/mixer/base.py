"""What both mixer backends share: libraries, the position in the endless stream of batches,
the epoch plan, and turning a batch's stored crops into the yielded tensors.

A batch is a dict: `mixture`, `target` float32 `(batch, 2, bins, frames)` magnitudes (normalised
as `normalisation` says), `valid` bool `(batch, frames)` (False on padding past a track's end,
to be masked out of the loss), `kind` int64 `(batch,)` (index into `KINDS`), `scale` float32
`(batch,)` (what magnitudes were divided by), `index` int64 `(batch,)` (the example's index in
its epoch), `normalisation` (a string), `silent_crops`, `epoch` and `batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vr_data.errors import VRDataError
from vr_data.store import remote
from vr_data.mixer.config import CropBuffers, MixerConfig, Recipe, draw_recipe
from vr_data.mixer.kernels import crop_level_dbfs, mix_magnitudes
from vr_data.mixer.normalisation import InputNormalisation
from vr_data.mixer.sampling import KINDS, CropCells, crop_cells, nominal_cells, plan_epoch, track_phases

# Salts of each library's per-epoch track phases (the grid of crop cells).
_PHASE_SALT = {"pair": 1, "augmented": 2, "pretrain": 3, "vocal": 4}


@dataclass
class Library:
    """Crops of one kind come from these `(track, source)` entries; `frames` per entry."""

    entries: list
    frames: np.ndarray

    def cells(self, crop_frames: int, phases: np.ndarray | None = None) -> CropCells:
        return crop_cells(self.frames, crop_frames, phases)


def build_libraries(tracks, config: MixerConfig) -> dict[str, Library]:
    """Group store tracks (of `config.split`) into the libraries each example kind draws from."""
    chosen = [t for t in tracks if t.split == config.split]

    def library(pairs):
        return Library(entries=pairs, frames=np.array([t.frames for t, _ in pairs], np.int64))

    instrumentals = [(t, "instrumental") for t in chosen if t.role == "instrumental" and "instrumental" in config.instrumental_sources]
    instrumentals += [(t, "instrumental") for t in chosen if t.role == "pair" and "pair" in config.instrumental_sources]
    # The pretraining library: the pretrain role's audio, plus other roles' sources on request.
    pretrain_from = {"pretrain": ("pretrain", "audio"), "pair_mixture": ("pair", "mixture"),
                     "pair_instrumental": ("pair", "instrumental"), "instrumental": ("instrumental", "instrumental")}
    pretrain = [(t, source) for name, (role, source) in pretrain_from.items() if name in config.pretrain_sources
                for t in chosen if t.role == role]
    return {
        "pair": library([(t, "mixture") for t in chosen if t.role == "pair"]),
        "augmented": library(instrumentals),
        "vocal": library([(t, "vocal") for t in chosen if t.role == "vocal"]),
        "pretrain": library(pretrain),
    }


class MixerBase(IterableDataset):
    """Position (epoch, batch), worker split and batch assembly shared by both backends."""

    # Whether an example is a pure function of (seed, epoch, index) alone, so that a resume may
    # change the world size and the number of workers (`MixerLoader.load_state_dict`).
    topology_free = True

    def __init__(self, store_path: str | Path, config: MixerConfig, rank: int | None = None, world_size: int | None = None,
                 step_examples: int | None = None):
        """`step_examples`: examples of one optimizer step over all ranks and micro-batches (the
        epoch's length is a multiple of it, so it is the same at every world size that splits the
        step); default `batch_size x world_size`."""
        super().__init__()
        from vr_data.store import open_store

        self.store_path = remote.location(store_path)  # a directory or an s3:// prefix
        self.store = open_store(self.store_path)
        self.config = config
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.step_examples = int(step_examples or config.batch_size * self.world_size)
        if self.step_examples % (config.batch_size * self.world_size):
            raise VRDataError(None, f"an optimizer step of {self.step_examples} examples does not split into "
                                    f"batches of {config.batch_size} x {self.world_size} ranks")
        self.records = False  # True: each batch carries `examples`, one `example_record` per example
        self.epoch = 0
        self.start_batch = 0
        self.bins = self.store.config.bins
        self.window_energy = _window_energy(self.store.config)
        self.libraries = build_libraries(self.store.tracks, config)
        if config.proportions.get("augmented", 0) > 0 and config.vocal_probability > 0 and not self.libraries["vocal"].entries:
            raise VRDataError(self.store_path, f"augmented mixes need vocals, but the store has no {config.split} vocal tracks")
        self._cells: dict[tuple[int, int], dict[str, CropCells]] = {}  # (crop, epoch) -> cells
        self.output_ring = 0  # > 0: reuse that many output buffers (MixerLoader(reuse_outputs=True))
        # The scaling inference applies too (recorded in every checkpoint): one definition.
        self.normalisation = InputNormalisation.for_mixer(self.store_path, config.normalisation, config.stats_role)
        self._ring: dict[tuple, list] = {}
        self._ring_position = 0

    # -- position -------------------------------------------------------------------------------
    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at batch `batch` of epoch `epoch` (resume)."""
        self.epoch, self.start_batch = int(epoch), int(batch)

    def set_crop_frames(self, crop_frames: int) -> None:
        """Change the crop length (curriculum stage); nothing is rebuilt, only the plan."""
        self.config = replace(self.config, crop_frames=int(crop_frames))

    def cells(self, epoch: int = 0) -> dict[str, CropCells]:
        """Each library's crop cells in `epoch`: every track tiled at its own phase of that epoch,
        a pure function of (seed, epoch, library, track) (`sampling.crop_cells`)."""
        crop, seed = self.config.crop_frames, self.config.seed
        key = (crop, int(epoch))
        if key not in self._cells:
            if len(self._cells) >= 4:  # a worker moves forward through epochs; keep a few
                self._cells.pop(next(iter(self._cells)))
            self._cells[key] = {
                kind: self.libraries[kind].cells(crop, track_phases(seed, int(epoch), _PHASE_SALT[kind],
                                                                    len(self.libraries[kind].entries), crop))
                for kind in KINDS
            }
        return self._cells[key]

    def examples_per_epoch(self) -> int:
        """Configured, else enough that every crop cell of the most-used library comes up once
        (cells counted at phase 0, so every epoch has the same length). Proportions are weights:
        {pair .5, augmented .5}, {1, 1} and {5, 5} give the same epoch."""
        if self.config.examples_per_epoch:
            return int(self.config.examples_per_epoch)
        shares = normalised_proportions(self.config.proportions)
        crop = self.config.crop_frames
        counts = [nominal_cells(self.libraries[kind].frames, crop) / share for kind, share in shares.items()
                  if share > 0 and len(self.libraries[kind].entries)]
        return max(int(np.ceil(max(counts))) if counts else 0, self.step_examples)

    def batches_per_rank(self) -> int:
        """Batches of an epoch on each rank: the epoch rounded down to whole optimizer steps."""
        whole_steps = self.examples_per_epoch() // self.step_examples * self.step_examples
        return whole_steps // (self.config.batch_size * self.world_size)

    def __len__(self) -> int:
        return self.batches_per_rank()

    def plan(self, epoch: int):
        cells = self.cells(epoch)
        return plan_epoch(
            self.config.seed, epoch, self.config.proportions, {k: len(v) for k, v in cells.items()},
            self.examples_per_epoch(), self.config.batch_size, self.world_size, self.step_examples,
        )

    def worker(self) -> tuple[int, int]:
        """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

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

    # -- batch assembly --------------------------------------------------------------------------
    def new_buffers(self) -> CropBuffers:
        """Zeroed crop buffers for one batch at the current crop length."""
        return CropBuffers.zeros(self.config.batch_size, self.config.crop_frames, self.bins)

    def draw_recipe(self, rng: np.random.Generator, kind: str) -> Recipe:
        return draw_recipe(self.config, rng, kind)

    def finish_batch(self, buffers: CropBuffers, recipes: list[Recipe], indices, epoch: int, k: int) -> dict:
        """Run the mixing kernel for every example into output tensors, then scale each example
        by the configured `InputNormalisation` (the one inference applies).

        In a DataLoader worker the outputs are allocated in shared memory, so handing the batch
        to the training process copies nothing.
        """
        size, frames = len(recipes), self.config.crop_frames
        mixture, target = self._outputs((size, 2, self.bins, frames))
        mixture_np, target_np = mixture.numpy(), target.numpy()
        valid = np.zeros((size, frames), bool)
        scale = np.ones(size, np.float32)
        kinds = np.zeros(size, np.int64)
        for j, recipe in enumerate(recipes):
            _, _, peak = mix_magnitudes(
                buffers.main[j], None if recipe.target_is_main else buffers.instrumental[j],
                buffers.vocal[j] if recipe.has_vocal else None,
                vocal_gain=recipe.vocal_gain, swap_main=recipe.swap_main, swap_vocal=recipe.swap_vocal,
                mono=recipe.mono, out_mixture=mixture_np[j], out_target=target_np[j],
            )
            valid[j, : recipe.valid] = True
            kinds[j] = KINDS.index(recipe.kind)
            scale[j] = self.normalisation.normalise_example(mixture_np[j], target_np[j], peak)
        return {
            "mixture": mixture, "target": target,
            "valid": torch.from_numpy(valid), "kind": torch.from_numpy(kinds), "scale": torch.from_numpy(scale),
            "index": torch.as_tensor(np.asarray(indices, np.int64)),
            "normalisation": self.config.normalisation,
            "silent_crops": torch.as_tensor(sum(r.silent for r in recipes)),
            "storage_retries": torch.as_tensor(self._new_retries()),
            "epoch": epoch, "batch": k,
            **({"examples": [self.example_record(r, i) for r, i in zip(recipes, indices)]} if self.records else {}),
        }

    def _new_retries(self) -> int:
        """Object-storage requests this process retried since its previous batch (0 for a local store)."""
        total = remote.retry_count()
        new = total - getattr(self, "_retries_seen", 0)
        self._retries_seen = total
        return new

    def example_record(self, recipe: Recipe, index: int) -> dict:
        """What made one example (JSON-serialisable), for the training ledger and `preview-mix`:
        `index` (in its epoch), `kind`, `tracks` (store track ids: the main crop's, then the
        vocal's if any), `sources` (what was read of each), `frames` (each crop's first frame),
        `gains` (the vocal's linear gain per output channel; empty without a vocal), `valid`
        frames, and the flips: `swap` (main, vocal), `mono`, `instrumental_only`."""
        entry, start = recipe.main
        track, source = self.libraries[recipe.kind].entries[entry]
        if recipe.kind == "pair" and recipe.instrumental_only:
            source = "instrumental"  # the example's mixture is the pair's instrumental
        record = {"index": int(index), "kind": recipe.kind, "tracks": [track.id], "sources": [source],
                  "frames": [int(start)], "gains": [], "valid": int(recipe.valid)}
        if recipe.has_vocal:
            vocal_entry, vocal_start = recipe.vocal_pick
            vocal, vocal_source = self.libraries["vocal"].entries[vocal_entry]
            record["tracks"].append(vocal.id)
            record["sources"].append(vocal_source)
            record["frames"].append(int(vocal_start))
            record["gains"] = [round(float(gain), 6) for gain in recipe.vocal_gain]
        record.update(swap=[bool(recipe.swap_main), bool(recipe.swap_vocal)], mono=bool(recipe.mono),
                      instrumental_only=bool(recipe.instrumental_only))
        return record

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

    def is_silent(self, stored: np.ndarray) -> bool:
        """Whether a stored crop is under `silence_dbfs` (level estimated from every 8th frame)."""
        return crop_level_dbfs(stored, self.window_energy, frame_step=8) < self.config.silence_dbfs


def normalised_proportions(proportions: dict[str, float]) -> dict[str, float]:
    """Each kind's share of an epoch: the (non-negative) weights divided by their sum."""
    weights = {kind: max(0.0, float(weight)) for kind, weight in proportions.items()}
    total = sum(weights.values())
    return {kind: weight / total for kind, weight in weights.items()} if total > 0 else weights


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given (rank, world size), else torch.distributed's when initialised, else (0, 1)."""
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise VRDataError(None, f"rank {rank} outside world size {world_size}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _window_energy(stft_config) -> float:
    """sum(window**2) of the store's STFT window (periodic Hann: 3/8 n_fft)."""
    from vr_data.dsp.stft import window_array

    return float(np.sum(np.asarray(window_array(stft_config), np.float64) ** 2))
