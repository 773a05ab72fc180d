"""Resuming a run on another number of ranks or loader workers (docs/training.md, "Elastic resume").

An example is a pure function of (seed, epoch, index in the epoch) and an optimizer step of a
stage takes the examples `[s B, (s + 1) B)` of its epoch (`B`: the stage's global batch), however
many ranks split it; the loader state records that global position. So a run checkpointed at N
ranks continues at N' with exactly the examples it had not trained on, provided every stage's
global batch splits over N' ranks. The DataLoader workers only decide which process makes a
batch, so their number may change too (`--set data.workers=W` with `--resume`).
"""

from __future__ import annotations

import torch

from vr_data.errors import VRDataError
from vr_model.train.build import rank_batching


def check_stage_splits(curriculum, world_size: int) -> None:
    """Every stage's global batch (`batch_size x accumulation`) must split evenly over the ranks:
    else one line naming the first stage that does not and the rank counts that would work."""
    for index, stage in enumerate(curriculum):
        try:
            rank_batching(stage, world_size)
        except VRDataError:
            total = stage.batch_size * stage.accumulation
            limit = min(s.batch_size * s.accumulation for s in curriculum)
            working = [n for n in range(1, limit + 1) if all(_splits(s, n) for s in curriculum)]
            raise VRDataError(None, f"curriculum.{index}: a global batch of {stage.batch_size} x {stage.accumulation} "
                                    f"= {total} examples cannot be split over {world_size} ranks; rank counts "
                                    f"that split every stage: {', '.join(map(str, working))}") from None


def _splits(stage, world_size: int) -> bool:
    try:
        rank_batching(stage, world_size)
    except VRDataError:
        return False
    return True


def resume_position(loaders: list[dict], rank: int) -> dict:
    """This rank's loader state from a checkpoint's (one per saved rank): its own at the same
    world size; at another, rank 0's (every rank holds the same global position)."""
    return loaders[rank] if rank < len(loaders) else loaders[0]


def resume_rng(states: list[dict], rank: int, world_size: int, seed: int, step: int, device: torch.device) -> None:
    """Restore this rank's torch RNG (dropout) at the same world size; at another the saved
    streams do not map onto the ranks, so each rank starts a fresh stream keyed by (seed, step,
    rank) (dropout masks then differ from an uninterrupted run's; the examples do not)."""
    from vr_model.train.state import set_rng_state

    if len(states) == world_size:
        set_rng_state(states[rank], device)
    else:
        torch.manual_seed((seed * 1000 + 1 + rank) * 1_000_003 + step)
