"""The learning rate as a pure function of the optimizer step (nanoGPT's `get_lr`).

Resuming needs no scheduler object: step `n` of a resumed run gets the rate step `n` of an
uninterrupted run got. Steps count from 1 (the first optimizer step).
"""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int,
                  decay: str = "polynomial", power: float = 1.0) -> float:
    """The rate of optimizer step `step` (1-based) of `total_steps`.

    - warmup: `lr * step / warmup_steps` for `step <= warmup_steps` (never 0, so step 1 learns);
    - then decay from `lr` to `min_lr`, reached at `step == total_steps`:
      `polynomial`: `min_lr + (lr - min_lr) * (1 - progress) ** power`,
      `cosine`: `min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2`,
      where `progress` goes from 0 (end of warmup) to 1 (last step);
    - past `total_steps`: `min_lr`.
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif decay == "polynomial":
        factor = (1.0 - progress) ** power
    else:
        raise ValueError(f"unknown decay {decay!r}")
    return min_lr + (lr - min_lr) * factor
