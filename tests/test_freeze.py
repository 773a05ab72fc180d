"""Freezing the encoders: frozen weights stay bit-identical through optimizer steps, frozen modules
stay in eval mode, autograd records nothing in the encoder, and unfreezing hands the encoder to
the optimizer as new groups. The optimizers are built as the trainer builds them
(`make_optimizer`: decayed and not-decayed groups; `unfreeze_into` with `parameter_groups`)."""

from __future__ import annotations

import pytest
import torch

from vr_data.errors import VRDataError
from vr_model.network.config import FramePrimerConfig
from vr_model.train.freeze import (
    FreezePlan, apply_plan, freeze, is_frozen, parameter_counts, unfreeze, unfreeze_into,
)
from vr_model.network.unet import FramePrimerUNet
from vr_model.train.build import make_optimizer, parameter_groups
from vr_model.train.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Dropout on, so eval vs train mode is visible in the outputs.
SMALL = FramePrimerConfig(bins=64, channels=(4, 6, 8), encoder_primers=(0, 1, 1), decoder_primers=(0, 1, 1),
                          num_heads=2, feedforward_expansion=1, max_frames=32, dropout=0.3)


TRAIN = load_config(None, ["train.lr=1e-2", "train.weight_decay=0.1"]).train
CPU = torch.device("cpu")


def trainer_optimizer(model, plan: FreezePlan, step: int) -> torch.optim.AdamW:
    """The optimizer the trainer makes for `plan` at 0-based `step` (a fresh run or a resume)."""
    return make_optimizer(model, TRAIN, CPU, plan, step)


def unfreeze_as_the_trainer_does(optimizer, model, plan: FreezePlan):
    return unfreeze_into(optimizer, model, plan, lambda params: parameter_groups(model, TRAIN.weight_decay, params))


def small_model(seed: int = 0) -> FramePrimerUNet:
    torch.manual_seed(seed)
    return FramePrimerUNet(SMALL)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mixture = torch.rand(2, 2, 65, 16, generator=generator)
    target = mixture * torch.rand(2, 2, 65, 16, generator=generator)
    return mixture, target


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def train_steps(model, optimizer, steps: int, first_seed: int = 0) -> None:
    for step in range(steps):
        mixture, target = batch(first_seed + step)
        loss = (model(mixture) * mixture - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_encoder_weights_are_bit_identical_after_steps_while_the_rest_change():
    model = small_model().train()
    counts = freeze(model, "encoders")
    encoder_before, decoder_before = snapshot(model.encoder), snapshot(model.decoder)
    out_before = snapshot(model.out)
    optimizer = trainer_optimizer(model, FreezePlan("encoders"), 0)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    train_steps(model, optimizer, 3)
    for name, tensor in snapshot(model.encoder).items():
        assert torch.equal(tensor, encoder_before[name]), name
    changed = [name for name, tensor in snapshot(model.decoder).items() if not torch.equal(tensor, decoder_before[name])]
    assert len(changed) == len(decoder_before)  # every decoder tensor moved
    assert not torch.equal(model.out.weight, out_before["weight"])
    encoder_size = sum(p.numel() for p in model.encoder.parameters())
    assert counts.frozen == encoder_size
    assert counts.trainable + counts.frozen == model.num_parameters()
    assert str(counts) == f"{counts.trainable:,} trainable, {counts.frozen:,} frozen parameters"


def test_frozen_modules_stay_in_eval_mode_when_the_model_is_put_in_train_mode():
    model = small_model()
    freeze(model, "encoders")
    model.train()
    assert all(not module.training for module in model.encoder.modules())
    assert all(module.training for module in model.decoder.modules())
    assert is_frozen(model.encoder) and not is_frozen(model.decoder)
    # Dropout off in the encoder: its outputs repeat exactly between two training-mode forwards.
    mixture, _ = batch(0)
    outputs = []
    hook = model.encoder[-1].register_forward_hook(lambda module, inputs, output: outputs.append(output[0]))
    model(mixture)
    model(mixture)
    hook.remove()
    assert torch.equal(outputs[0], outputs[1])
    model.eval()
    assert not any(module.training for module in model.modules())


def test_no_autograd_graph_is_recorded_in_a_frozen_encoder():
    model = small_model().train()
    encoder_outputs = []
    hooks = [level.register_forward_hook(lambda module, inputs, output: encoder_outputs.append(output[0]))
             for level in model.encoder]
    mixture, _ = batch(1)
    model(mixture)
    assert all(output.grad_fn is not None for output in encoder_outputs)  # unfrozen: a graph
    encoder_outputs.clear()
    freeze(model, "encoders")
    prediction = model(mixture)
    assert len(encoder_outputs) == SMALL.levels
    assert all(output.grad_fn is None and not output.requires_grad for output in encoder_outputs)
    assert prediction.grad_fn is not None  # the decoder still trains
    prediction.mean().backward()
    for hook in hooks:
        hook.remove()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_unfreeze_after_steps_adds_the_encoder_as_new_optimizer_groups():
    plan = FreezePlan("encoders", unfreeze_after=2)
    assert [plan.frozen_at(step) for step in range(4)] == [True, True, False, False]
    model = small_model().train()
    apply_plan(model, plan, 0)
    optimizer = trainer_optimizer(model, plan, 0)
    encoder_before = snapshot(model.encoder)
    train_steps(model, optimizer, 2)
    assert all(torch.equal(t, encoder_before[n]) for n, t in snapshot(model.encoder).items())
    counts = unfreeze_as_the_trainer_does(optimizer, model, plan)
    assert counts.frozen == 0 and counts.trainable == model.num_parameters()
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0, 0.1, 0.0]
    encoder = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for group in optimizer.param_groups[2:] for p in group["params"]} == encoder
    assert all(module.training for module in model.encoder.modules())
    train_steps(model, optimizer, 2, first_seed=2)
    assert any(not torch.equal(t, encoder_before[n]) for n, t in snapshot(model.encoder).items())
    # A run resumed after the unfreeze builds the same groups, so the optimizer state loads.
    resumed = small_model(seed=1)
    apply_plan(resumed, plan, 4)
    resumed_optimizer = trainer_optimizer(resumed, plan, 4)
    assert ([len(g["params"]) for g in resumed_optimizer.param_groups]
            == [len(g["params"]) for g in optimizer.param_groups])
    resumed_optimizer.load_state_dict(optimizer.state_dict())


def test_unfreeze_restores_train_mode_and_gradients():
    model = small_model().train()
    freeze(model, "encoders")
    unfreeze(model, "encoders")
    assert all(module.training for module in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert parameter_counts(model).frozen == 0
    model.eval()
    model.train()
    assert all(module.training for module in model.encoder.modules())


def test_unknown_part_is_refused():
    with pytest.raises(VRDataError):
        FreezePlan("decoders")
    with pytest.raises(VRDataError):
        freeze(small_model(), "everything")
