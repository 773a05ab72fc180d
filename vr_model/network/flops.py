"""FLOPs of a forward pass, counted by `torch.utils.flop_counter.FlopCounterMode` on meta tensors.

The model is built and run on the meta device, so counting the 108M preset at 2048 frames
takes no memory and well under a second. FlopCounterMode counts matrix multiplications and
convolutions (2 FLOPs per multiply-add); normalisation, activations, softmax and other
element-wise work are not counted (a few percent here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vr_model.network.config import FramePrimerConfig
from vr_model.network.presets import build_model, get_config


def forward_flops(name_or_config: str | FramePrimerConfig | dict[str, Any], frames: int, batch: int = 1) -> int:
    """FLOPs of one forward pass on `(batch, in_channels, bins + 1, frames)`."""
    config = get_config(name_or_config)
    with torch.device("meta"):
        model = build_model(config)
        magnitude = torch.empty(batch, config.in_channels, config.bins + 1, frames)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(magnitude)
    return counter.get_total_flops()


def train_step_flops(name_or_config: str | FramePrimerConfig | dict[str, Any], frames: int, batch: int = 1) -> int:
    """FLOPs of one training step's forward and backward (an L1 loss on the masked mixture).

    Counted like `forward_flops`, on the meta device; about 3x the forward (the backward of a
    matmul or convolution is two of them). Recomputation under gradient checkpointing is not
    counted: this is the model's work, the numerator of model FLOPs utilisation.
    """
    config = get_config(name_or_config)
    with torch.device("meta"):
        model = build_model(config).train()
        magnitude = torch.empty(batch, config.in_channels, config.bins + 1, frames)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = torch.nn.functional.l1_loss(model(magnitude) * magnitude, magnitude)
        loss.backward()
    return counter.get_total_flops()
