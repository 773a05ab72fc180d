"""Deterministic epoch plans: which crop every example of an epoch uses, for every rank.

Everything here is a pure function of `(seed, epoch, example index)`; a rank's stream of batches
is a pure function of `(seed, epoch, rank, world_size)`, and DataLoader workers only split that
stream, so the batches a rank sees do not depend on the number of workers.

Indexing: an epoch has `batches_per_rank` batches on every rank (equal by construction, so DDP
never hangs at an epoch end). Rank `r` takes global batches `g = k * world_size + r`; example
`i = g * batch_size + j`. Within an epoch each example index is unique, and crops of the pair,
instrumental and pretraining libraries are drawn from a permutation of all crop cells, so no two
examples of an epoch (on any rank or worker) use the same cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("pair", "augmented", "pretrain")


@dataclass(frozen=True)
class CropCells:
    """All crop cells of a library: cell `n` is `crop_frames` frames of track `track[n]` from `start[n]`."""

    track: np.ndarray  # int64 (cells,) index into the library's track list
    start: np.ndarray  # int64 (cells,) first frame

    def __len__(self) -> int:
        return int(self.track.size)


def crop_cells(track_frames: np.ndarray, crop_frames: int) -> CropCells:
    """Tile each track into ceil(frames / crop_frames) cells.

    The last cell of a track is moved back to end at the track end when the track is at least one
    crop long (no padding needed); shorter tracks get one cell starting at 0 (padded by readers).
    """
    track_frames = np.asarray(track_frames, np.int64)
    counts = np.maximum(1, -(-track_frames // crop_frames))
    track = np.repeat(np.arange(track_frames.size, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    start = (np.arange(track.size, dtype=np.int64) - np.repeat(first, counts)) * crop_frames
    end_limit = np.maximum(track_frames[track] - crop_frames, 0)
    return CropCells(track=track, start=np.minimum(start, end_limit))


def example_rng(seed: int, epoch: int, index: int, salt: int = 0) -> np.random.Generator:
    """The random generator of one example: a pure function of its coordinates."""
    return np.random.Generator(np.random.Philox(key=np.array([seed, epoch * 1_000_003 + salt], np.uint64),
                                                counter=np.array([index, 0, 0, 0], np.uint64)))


@dataclass(frozen=True)
class EpochPlan:
    """Which kind and which cell every example of one epoch uses (global, before rank split)."""

    epoch: int
    kinds: np.ndarray        # int8 (examples,) index into KINDS
    cell: np.ndarray         # int64 (examples,) cell index within its kind's library (-1: none)
    batch_size: int
    world_size: int

    @property
    def batches_per_rank(self) -> int:
        return self.kinds.size // (self.batch_size * self.world_size)

    def global_batch(self, rank: int, k: int) -> int:
        return k * self.world_size + rank

    def example_indices(self, rank: int, k: int) -> range:
        g = self.global_batch(rank, k)
        return range(g * self.batch_size, (g + 1) * self.batch_size)


def plan_epoch(
    seed: int,
    epoch: int,
    proportions: dict[str, float],
    cells_per_kind: dict[str, int],
    examples: int,
    batch_size: int,
    world_size: int = 1,
) -> EpochPlan:
    """Assign each of `examples` indices a kind (by `proportions`) and a distinct cell of its library.

    `examples` is rounded down to a multiple of `batch_size * world_size`. A kind whose library has
    fewer cells than examples of that kind cycles through a fresh permutation again.
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    step = batch_size * world_size
    examples = (examples // step) * step
    weights = np.array([max(0.0, float(proportions.get(kind, 0.0))) for kind in KINDS])
    for position, kind in enumerate(KINDS):
        if weights[position] > 0 and cells_per_kind.get(kind, 0) == 0:
            raise ValueError(f"proportion of {kind!r} examples is {weights[position]:g} but that library is empty")
    if weights.sum() <= 0:
        raise ValueError("all example proportions are zero")
    kinds = rng.choice(len(KINDS), size=examples, p=weights / weights.sum()).astype(np.int8)
    cell = np.full(examples, -1, np.int64)
    for position, kind in enumerate(KINDS):
        where = np.flatnonzero(kinds == position)
        n_cells = cells_per_kind.get(kind, 0)
        if where.size == 0 or n_cells == 0:
            continue
        repeats = -(-where.size // n_cells)
        order = np.concatenate([rng.permutation(n_cells) for _ in range(repeats)])
        cell[where] = order[: where.size]
    return EpochPlan(epoch=epoch, kinds=kinds, cell=cell, batch_size=batch_size, world_size=world_size)
