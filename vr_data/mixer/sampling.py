"""Deterministic epoch plans: which crop every example of an epoch uses, for every rank.

Everything here is a pure function of `(seed, epoch, example index)`: the examples of an epoch
(their kinds, cells and, in the backends, every random choice) do not depend on how many ranks
or DataLoader workers make them. Ranks and workers only decide who computes which indices: a
rank's stream of batches is a pure function of `(seed, epoch, rank, world_size)`, and workers
only split that stream.

Indexing: an epoch has `batches_per_rank` batches on every rank (equal by construction, so DDP
never hangs at an epoch end). Rank `r` takes global batches `g = k * world_size + r`; example
`i = g * batch_size + j`. So the `world_size` batches of round `k` are the examples
`[k B, (k + 1) B)`, `B = batch_size x world_size`, whatever the split: a position in an epoch is
a count of examples, and a resume at another world size with the same `B` per optimizer step
continues at the same example. The epoch's length is a multiple of `multiple` (the examples of
one optimizer step, all ranks and micro-batches), so it is the same at every world size that
splits that step. Within an epoch each example index is unique, and crops of the pair,
instrumental and pretraining libraries are drawn from a permutation of all crop cells, so no two
examples of an epoch (on any rank or worker) use the same cell.

Crop cells tile each track at a phase drawn per (seed, epoch, library, track): crop boundaries
move from epoch to epoch, so over epochs a track is cut at every offset, while within an epoch
the cells still cover the whole track with little overlap (`crop_cells`).
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


def crop_cells(track_frames: np.ndarray, crop_frames: int, phases: np.ndarray | None = None) -> CropCells:
    """Tile each track into crop cells, the grid shifted by the track's phase.

    A track of `frames > crop_frames` with phase `o` (in `[0, crop_frames)`) gets the cells
    starting at `o, o + crop, o + 2 crop, ...` that fit in it, plus a cell at 0 when `o > 0` (the
    head before the grid) and one ending at the track end when the grid leaves a tail: every
    frame is in some cell, cells overlap only at the two ends, and a track has `ceil(frames /
    crop)` or one more cells. Shorter tracks get one cell at 0 (padded by readers). Without
    `phases` (all 0) the grid is `0, crop, ...` with the last cell moved back to end at the track
    end.
    """
    track_frames = np.asarray(track_frames, np.int64)
    phases = np.zeros(track_frames.size, np.int64) if phases is None else np.asarray(phases, np.int64)
    if phases.shape != track_frames.shape or (phases.size and (phases.min() < 0 or phases.max() >= crop_frames)):
        raise ValueError(f"phases must be one per track, in [0, {crop_frames})")
    long = track_frames > crop_frames
    phases = np.where(long, phases, 0)
    grid = np.where(long, (track_frames - phases) // crop_frames, 0)       # cells on the shifted grid
    head = long & (phases > 0)                                              # frames [0, o) before it
    tail = long & (phases + grid * crop_frames < track_frames)              # frames after its last cell
    counts = np.where(long, grid + head + tail, 1)
    track = np.repeat(np.arange(track_frames.size, dtype=np.int64), counts)
    local = np.arange(track.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    head_t, tail_t = head[track], tail[track]
    start = phases[track] + (local - head_t) * crop_frames
    start = np.where(head_t & (local == 0), 0, start)
    start = np.where(tail_t & (local == counts[track] - 1), track_frames[track] - crop_frames, start)
    return CropCells(track=track, start=np.where(long[track], start, 0))


def nominal_cells(track_frames: np.ndarray, crop_frames: int) -> int:
    """Cells of a library at phase 0 (`sum ceil(frames / crop)`): what sizes an epoch, so the
    epoch length does not change with the phases."""
    return int(np.maximum(1, -(-np.asarray(track_frames, np.int64) // crop_frames)).sum())


def track_phases(seed: int, epoch: int, salt: int, tracks: int, crop_frames: int) -> np.ndarray:
    """The grid phase of each track of one library in one epoch, uniform in `[0, crop_frames)`."""
    return np.random.default_rng([seed, epoch, salt, 0xCE11]).integers(0, crop_frames, size=tracks, dtype=np.int64)


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
    multiple: int | None = None,
) -> EpochPlan:
    """Assign each of `examples` indices a kind (by `proportions`) and a distinct cell of its library.

    `examples` is rounded down to a multiple of `multiple` (default `batch_size * world_size`;
    it must be a multiple of that). The plan depends on `examples` (after rounding), never on
    `batch_size` or `world_size` themselves. A kind whose library has
    fewer cells than examples of that kind cycles through a fresh permutation again. Proportions
    are weights: only their ratios matter.
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    step = multiple or batch_size * world_size
    if step % (batch_size * world_size):
        raise ValueError(f"an epoch multiple of {step} examples does not split into batches of "
                         f"{batch_size} x {world_size} ranks")
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
