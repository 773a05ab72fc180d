"""The supervised loss's default and why: on bins the model cannot yet tell apart, L1 drives the
instrumental mask to 1 (pass everything) while L2 drives it to the least-squares ratio.

`benchmarks/bench_quality.py` found this on a budget: after 160 steps `tiny` trained with L1 had
a mask of about 1 everywhere and gained nothing over the mixture, with L2 it gained 5 dB; L1
only leaves that plateau after some 350 steps (docs/performance.md, "quality"). These tests pin
the mechanism on a one-parameter mask.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vr_model.train import load_config
from vr_model.train.objectives import OBJECTIVES, StepContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConstantMask(nn.Module):
    """A model that cannot see its input: one logit per channel, `sigmoid(logit)` everywhere."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(2))

    def forward(self, magnitude: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logit)[None, :, None, None].expand_as(magnitude)


def ambiguous_batch(vocal_share: float = 0.3, vocal_ratio: float = 0.3) -> dict:
    """Mixture magnitudes of 1 everywhere; on `vocal_share` of the frames a vocal dominates and
    the instrumental is `vocal_ratio` of the mixture, elsewhere the instrumental is the mixture."""
    frames = 100
    mixture = torch.ones(4, 2, 9, frames)
    target = mixture.clone()
    target[..., : int(vocal_share * frames)] = vocal_ratio
    return {"mixture": mixture, "target": target, "valid": torch.ones(4, frames, dtype=torch.bool)}


def trained_mask(loss: str, batch: dict, steps: int = 400) -> float:
    config = load_config(None, [f"train.loss={loss}"])
    model = ConstantMask()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(steps):
        terms = OBJECTIVES["supervised"](model, batch, config, StepContext(step + 1, 0, 0, 1))
        optimizer.zero_grad()
        (terms.error_sum / terms.count).backward()
        optimizer.step()
    return float(torch.sigmoid(model.logit.detach()).mean())


def test_l1_drives_an_undecided_mask_to_pass_everything():
    # L1's optimum for a constant mask is the median ratio (1 here): the gradient from the 70%
    # vocal-free frames never fades, so the logit keeps growing.
    assert trained_mask("l1", ambiguous_batch()) > 0.98


def test_l2_drives_an_undecided_mask_to_the_least_squares_ratio():
    # L2's optimum is the energy-weighted mean ratio: 0.7 x 1 + 0.3 x 0.3 = 0.79.
    assert trained_mask("l2", ambiguous_batch()) == pytest.approx(0.79, abs=0.01)


def test_the_supervised_loss_defaults_to_l2():
    assert load_config(None, []).train.loss == "l2"
