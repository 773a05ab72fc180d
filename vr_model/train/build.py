"""The pieces a run is made of, one small function each: the model, `--init` weights, the
optimizer's parameter groups, the optimizer, the EMA, the per-rank batch split.

Kept apart from the loop so that variants (finetuning with frozen encoders, another objective)
replace one function, not the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vr_data.errors import VRDataError
from vr_model.network.checkpoint import (
    WEIGHTS, checkpoint_model_config, load_weights, read_checkpoint_json, resolve_checkpoint,
)
from vr_model.network.config import FramePrimerConfig
from vr_model.network.unet import FramePrimerUNet
from vr_model.train.config import Stage, TrainSection


def build_model(config: FramePrimerConfig, seed: int, gradient_checkpointing: bool = False) -> FramePrimerUNet:
    """A freshly initialised model; the initialisation is a pure function of `seed`."""
    torch.manual_seed(seed)
    return FramePrimerUNet(config, gradient_checkpointing=gradient_checkpointing)


@dataclass
class InitReport:
    """What `--init` loaded: `loaded` tensor names, and those it left at their initial values."""

    checkpoint: str
    loaded: list[str]
    missing: list[str]       # in the model, not (or with another shape) in the checkpoint
    unexpected: list[str]    # in the checkpoint, not in the model
    new_head: tuple = ()     # output-head tensors left new: the checkpoint's head is another kind
    head: str = ""           # "linear -> mask" when the head kind changed (pretraining -> finetuning)
    document: dict | None = None  # the checkpoint's config.json (read once)


def init_from_checkpoint(model: FramePrimerUNet, path, partial: bool = False) -> InitReport:
    """Load a checkpoint's raw weights into `model` (weights only: no optimizer, no step).

    Strict (default): the checkpoint's model config must equal `model.config`; otherwise a
    `VRDataError` names the differing keys. `partial=True`: every tensor whose name and shape
    match is loaded, the rest are listed in the report (finetuning from another architecture).
    """
    directory = resolve_checkpoint(path, "best")
    document = read_checkpoint_json(directory)
    theirs = checkpoint_model_config(directory, document).to_dict()
    ours = model.config.to_dict()
    differing = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
    if differing and not partial:
        details = ", ".join(f"{key} ({theirs.get(key)!r} there, {ours.get(key)!r} here)" for key in differing)
        raise VRDataError(directory, f"--init checkpoint has another model config: {details}; "
                                     f"use --init-partial to load the matching tensors")
    weights = load_weights(directory / WEIGHTS)
    own = model.state_dict()
    matching = {name: tensor for name, tensor in weights.items() if name in own and own[name].shape == tensor.shape}
    # A denoising checkpoint's last convolution predicts noise; a mask head starts afresh.
    new_head = sorted(name for name in matching if name.startswith("out.")) if theirs["head"] != ours["head"] else []
    for name in new_head:
        del matching[name]
    with torch.no_grad():
        for name, tensor in matching.items():
            own[name].copy_(tensor)
    return InitReport(
        checkpoint=str(directory), loaded=sorted(matching),
        missing=sorted(set(own) - set(matching) - set(new_head)), unexpected=sorted(set(weights) - set(own)),
        new_head=tuple(new_head), head=f"{theirs['head']} -> {ours['head']}" if new_head else "", document=document,
    )


def parameter_groups(model: nn.Module, weight_decay: float, parameters=None) -> list[dict]:
    """AdamW groups: weight decay on matrices and convolution kernels (dim >= 2) only, as
    nanoGPT; biases, norm affines and embeddings-as-vectors are not decayed. Frozen parameters
    (`requires_grad = False`) are left out. `parameters`: only these (default: the model's)."""
    decay, no_decay = [], []
    for parameter in model.parameters() if parameters is None else parameters:
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, train: TrainSection, device: torch.device, freeze_plan=None,
                   step: int = 0) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`; the loop sets each step's lr from the schedule.

    With a `vr_model.train.freeze.FreezePlan`: the trainable parameters' groups, then - once the plan
    has unfrozen its part by 0-based step `step` - the part's groups, in the order the loop's
    `unfreeze_into` appends them, so a resumed run's optimizer state loads.
    """
    from vr_model.train.freeze import optimizer_param_groups

    blocks = [None] if freeze_plan is None else optimizer_param_groups(model, freeze_plan, step)
    groups = [group for block in blocks for group in parameter_groups(model, train.weight_decay, block)]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps,
                             fused=device.type == "cuda")


class ExponentialMovingAverage:
    """An EMA of a model's floating-point state: `ema = d * ema + (1 - d) * current`.

    The decay warms up as `min(decay, (1 + n) / (10 + n))` after `n` updates, so early weights
    (a random init) do not linger for thousands of steps in a short run. Integer buffers are
    copied. `state_dict()` has the model's names and goes to `ema.safetensors`.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, tensor in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow.lerp_(tensor.detach(), 1.0 - decay)
            else:
                shadow.copy_(tensor)

    def state_dict(self) -> dict[str, Tensor]:
        return self.shadow

    def load(self, state: dict[str, Tensor], updates: int) -> None:
        if set(state) != set(self.shadow):
            raise VRDataError(None, "the EMA weights do not match the model")
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)
        self.updates = int(updates)


def rank_batching(stage: Stage, world_size: int) -> tuple[int, int]:
    """(per-rank batch, accumulation) for a stage on `world_size` ranks.

    The global batch of an optimizer step, `batch_size x accumulation`, is fixed by the config.
    When `batch_size` divides by the world size each rank takes its share and the accumulation
    stays (then the ranks see exactly the examples one process would); otherwise the largest
    per-rank batch whose multiple fills the global batch exactly is chosen.
    """
    total = stage.batch_size * stage.accumulation
    if stage.batch_size % world_size == 0:
        return stage.batch_size // world_size, stage.accumulation
    for per_rank in range(min(stage.batch_size, total // world_size), 0, -1):
        if total % (per_rank * world_size) == 0:
            return per_rank, total // (per_rank * world_size)
    raise VRDataError(None, f"a global batch of {stage.batch_size} x {stage.accumulation} = {total} examples "
                            f"cannot be split evenly over {world_size} ranks")


def nominal_elements(stage: Stage, channels: int, bins: int) -> float:
    """Loss elements of an optimizer step if no frame were padding (a fixed scale for backward)."""
    return float(stage.batch_size * stage.accumulation * stage.crop_frames * channels * bins)
