"""Freezing the encoder side of the frame primer U-Net for finetuning, and unfreezing it later.

Frozen parameters get `requires_grad = False` and stay out of the optimizer; frozen modules
stay in eval mode (dropout off) even when the model is put in train mode. Freezing the encoders
is where the seed's finetuning speed-up comes from: the model's input needs no gradient, so when
no encoder parameter does either, autograd records nothing in the encoder - its forward keeps no
activations for backward and backward stops at the skip connections. (Freezing the decoders
would not save that: the encoders below them would still need their gradients.)

`FreezePlan(part, unfreeze_after)` is what a run asks for: `--freeze encoders
--unfreeze-after STEPS`. The optimizer's first parameter group is what is trainable from the
start; unfreezing appends the frozen part as a second group (`unfreeze_into`), so a run resumed
after the unfreeze step builds the same two groups (`optimizer_param_groups`) and its optimizer
state loads.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from torch import nn

from vr_data.errors import VRDataError

# What `--freeze` can name: attribute names of FramePrimerUNet's top-level module lists.
PARTS: dict[str, tuple[str, ...]] = {"none": (), "encoders": ("encoder",)}


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    frozen: int

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable, {self.frozen:,} frozen parameters"


@dataclass(frozen=True)
class FreezePlan:
    """Which part is frozen (`none` or `encoders`) and from which step it trains again
    (`unfreeze_after`: None = frozen for the whole run)."""

    part: str = "none"
    unfreeze_after: int | None = None

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise VRDataError(None, f"freeze must be one of {', '.join(PARTS)}, not {self.part!r}")
        if self.unfreeze_after is not None and self.unfreeze_after < 0:
            raise VRDataError(None, "unfreeze_after must be a step count >= 0")

    def frozen_at(self, step: int) -> bool:
        """Whether the part is frozen for optimizer step `step` (0-based)."""
        return self.part != "none" and (self.unfreeze_after is None or step < self.unfreeze_after)


def part_modules(model: nn.Module, part: str) -> list[nn.Module]:
    """The modules `part` names on a FramePrimerUNet (bare: unwrap DDP/compile first)."""
    if part not in PARTS:
        raise VRDataError(None, f"freeze must be one of {', '.join(PARTS)}, not {part!r}")
    return [getattr(model, name) for name in PARTS[part]]


def _train_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a frozen module: always eval, whatever the parent asks (dropout stays off)."""
    return nn.Module.train(self, False)


def freeze(model: nn.Module, part: str = "encoders") -> ParameterCounts:
    """Freeze `part` of `model` in place: no gradients, eval mode for good. Returns the counts."""
    for module in part_modules(model, part):
        module.requires_grad_(False)
        module.train = types.MethodType(_train_frozen, module)  # instance attribute: model.train() recurses into it
        module.train()
    return parameter_counts(model)


def unfreeze(model: nn.Module, part: str = "encoders") -> ParameterCounts:
    """Undo `freeze`: gradients on, and the modules follow the model's train/eval mode again."""
    for module in part_modules(model, part):
        module.requires_grad_(True)
        if "train" in vars(module):
            del module.train
        module.train(model.training)
    return parameter_counts(model)


def is_frozen(module: nn.Module) -> bool:
    return "train" in vars(module) and not any(parameter.requires_grad for parameter in module.parameters())


def parameter_counts(model: nn.Module) -> ParameterCounts:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return ParameterCounts(trainable=trainable, frozen=frozen)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def apply_plan(model: nn.Module, plan: FreezePlan, step: int) -> ParameterCounts:
    """Put the model in the state the plan gives for `step` (start of a run, or a resume)."""
    if plan.frozen_at(step):
        return freeze(model, plan.part)
    if plan.part != "none":
        return unfreeze(model, plan.part)
    return parameter_counts(model)


def optimizer_param_groups(model: nn.Module, plan: FreezePlan, step: int) -> list[list[nn.Parameter]]:
    """The optimizer's parameter lists at 0-based `step`: the always-trainable parameters, then -
    once the plan has unfrozen its part - the part's parameters (what `unfreeze_into` appends to
    a running optimizer). Read from the plan, not from `requires_grad`."""
    if plan.part == "none":
        return [list(model.parameters())]
    part = {id(p) for module in part_modules(model, plan.part) for p in module.parameters()}
    rest = [p for p in model.parameters() if id(p) not in part]
    if plan.frozen_at(step):
        return [rest]
    return [rest, [p for p in model.parameters() if id(p) in part]]


def unfreeze_into(optimizer, model: nn.Module, plan: FreezePlan, make_groups) -> ParameterCounts:
    """Unfreeze the plan's part and hand its parameters to `optimizer` as new groups.

    `make_groups(parameters) -> [group dicts]` splits them as the optimizer was built (the
    trainer: `parameter_groups`, decayed and not). The trainer's schedule sets every group's lr
    each step.
    """
    counts = unfreeze(model, plan.part)
    parameters = [p for module in part_modules(model, plan.part) for p in module.parameters()]
    for group in make_groups(parameters):
        optimizer.add_param_group(group)
    return counts
