"""Training objectives: what the model is asked to predict from a mixer batch, and the loss.

An objective is a function `(model, batch, config, context) -> LossTerms`: it runs the forward pass on a
batch (`vr_data.mixer` format: `mixture`, `target` `(B, 2, bins + 1, T)`, `valid` `(B, T)`) and
returns the *sum* of its per-element errors and how many elements it counted. The loop adds
these up over micro-batches and ranks and divides once by the global count, so the loss is a
mean over every valid element of the optimizer step, whatever the batch split, accumulation or
world size, and padding never counts. `train.objective` picks one from `OBJECTIVES`; a new
objective is one more function registered there (`denoise`: issue 15's pretraining).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from vr_model.train.config import TrainConfig

LOSSES = ("l1", "l2")


@dataclass(frozen=True)
class StepContext:
    """Where a micro-batch sits: optimizer `step` (1-based), `micro` (0..accumulation-1), this
    process's `rank` of `world_size`. An objective that draws random numbers (noise) keys its
    generator on these, so a resumed run draws exactly what the uninterrupted run drew."""

    step: int
    micro: int
    rank: int
    world_size: int


@dataclass
class LossTerms:
    """`error_sum`: scalar float32 sum of the per-element errors (differentiable);
    `count`: scalar float32 number of elements summed (valid frames x channels x bins)."""

    error_sum: Tensor
    count: Tensor


def masked_error(prediction: Tensor, target: Tensor, valid: Tensor, loss: str = "l1") -> LossTerms:
    """L1 (`|p - t|`) or L2 (`(p - t)**2`) summed over the valid frames only.

    prediction, target `(B, C, bins, T)`; valid `(B, T)` bool (False on padding).
    Computed in float32 whatever the autocast dtype of `prediction`.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    difference = prediction.float() - target.float()
    error = difference.abs() if loss == "l1" else difference.square()
    weights = valid.to(error.dtype)[:, None, None, :]                       # (B, 1, 1, T)
    count = weights.sum() * (error.shape[1] * error.shape[2])
    return LossTerms(error_sum=(error * weights).sum(), count=count)


def supervised_loss(mask: Tensor, mixture: Tensor, target: Tensor, valid: Tensor, loss: str = "l1") -> Tensor:
    """The vocal-remover loss: mean error between `mask * mixture` and the target magnitude
    over the valid frames (`(B, C, bins, T)` tensors, `valid` `(B, T)`) -> scalar."""
    terms = masked_error(mask * mixture, target, valid, loss)
    return terms.error_sum / terms.count.clamp_min(1)


def supervised_objective(model: nn.Module, batch: dict, config: "TrainConfig", context: StepContext) -> LossTerms:
    """The instrumental mask: `model(mixture) * mixture` against the instrumental magnitude."""
    mixture, target, valid = batch["mixture"], batch["target"], batch["valid"]
    mask = model(mixture, frame_mask=~valid)                                # (B, C, bins + 1, T)
    return masked_error(mask * mixture, target, valid, config.train.loss)


def denoise_objective(model: nn.Module, batch: dict, config: "TrainConfig", context: StepContext) -> LossTerms:
    """Denoising pretraining (`vr_model.train.denoise`): the model, with its linear head, predicts the
    unit noise mixed into the batch's `mixture` crops; error over valid frames, Nyquist excluded.

    Each example's noise comes from its own generator keyed on (train.seed, epoch, the example's
    index in its epoch), so it is the same after a resume and for any batch split or world size.
    """
    from vr_model.train.denoise import add_noise, example_generators

    mixture, valid = batch["mixture"], batch["valid"]
    settings = config.denoise_config()
    generators = example_generators(config.train.seed, int(batch.get("epoch", 0)), batch["index"].tolist(),
                                    device=mixture.device)
    noisy = add_noise(mixture, valid, settings, generators, config.mixer.normalisation)
    prediction = model(noisy.model_input, frame_mask=~valid)               # (B, C, bins + 1, T), unbounded
    bins = prediction.shape[2] - 1  # the model repeats its last bin for Nyquist: that noise is unpredictable
    return masked_error(prediction[:, :, :bins], noisy.noise[:, :, :bins], valid, settings.loss)


Objective = Callable[[nn.Module, dict, "TrainConfig", StepContext], LossTerms]


def forward_terms(objective: Objective, model: nn.Module, batch: dict, config: "TrainConfig", context: StepContext,
                  autocast_dtype: torch.dtype | None) -> LossTerms:
    """One forward pass of `objective` under the run's autocast (`None`: float32, no autocast).

    The one place training steps and validation run the model: the same precision in both."""
    device_type = batch["mixture"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return objective(model, batch, config, context)

OBJECTIVES: dict[str, Objective] = {
    "supervised": supervised_objective,
    "denoise": denoise_objective,
}
