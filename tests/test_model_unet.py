"""The frame primer U-Net: shapes, mask range, padding, residual score chains, gradients, presets."""

from __future__ import annotations

import json

import pytest
import torch

from vr_data.errors import VRDataError
from vr_model import FramePrimerConfig, FramePrimerUNet, build_model, count_parameters, get_config
from vr_model.network.attention import MultiDconvHeadAttention
from vr_model.network.flops import forward_flops
from vr_model.network.presets import PRESETS, SEED_PARAMETERS


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Same architecture (5 + 5 levels, primers everywhere) on 64 bins, so 2048 frames stay fast.
NARROW = FramePrimerConfig(
    bins=64, channels=(2, 2, 3, 3, 4), encoder_primers=(1, 1, 1, 1, 1), decoder_primers=(1, 1, 1, 1, 1),
    num_heads=2, feedforward_expansion=1, max_frames=2048, dropout=0.0,
)
# Two primers per level, as the seed, so the chains run inside a level and across levels.
CHAINED = NARROW.replace(channels=(3, 4, 4, 5, 5), encoder_primers=(2,) * 5, decoder_primers=(2,) * 5,
                         max_frames=64, feedforward_expansion=2)


def magnitude(config: FramePrimerConfig, frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.in_channels, config.bins + 1, frames, generator=generator)


@pytest.mark.parametrize("frames", [1, 16, 17, 33, 100, 255, 512, 1023, 2048])
def test_output_shape_equals_input_for_any_frame_count(frames):
    torch.manual_seed(0)
    model = FramePrimerUNet(NARROW).eval()
    with torch.inference_mode():
        mask = model(magnitude(NARROW, frames))
    assert mask.shape == (1, 2, 65, frames)


@pytest.mark.parametrize("frames", [16, 17, 64])
def test_tiny_preset_shapes_and_mask_range(frames):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    loud = magnitude(model.config, frames, batch=2) * 50.0  # far outside the normalised range
    with torch.inference_mode():
        mask = model(loud)
    assert mask.shape == loud.shape == (2, 2, 1025, frames)
    assert mask.dtype == torch.float32
    assert 0.0 <= mask.min().item() and mask.max().item() <= 1.0
    # Nyquist bin: the last kept bin's mask is replicated.
    assert torch.equal(mask[:, :, 1024], mask[:, :, 1023])


def test_frame_mask_makes_padding_invisible():
    """A crop padded at the end gives, on its real frames, the mask of the unpadded crop."""
    torch.manual_seed(0)
    model = FramePrimerUNet(CHAINED).eval()
    real = magnitude(CHAINED, 23)
    padded = torch.cat((real, torch.rand(1, 2, 65, 9) * 10.0), dim=-1)  # garbage in the padding
    frame_mask = torch.zeros(1, 32, dtype=torch.bool)
    frame_mask[:, 23:] = True
    with torch.inference_mode():
        unpadded = model(real)
        masked = model(padded, frame_mask)
        unmasked = model(padded)
    torch.testing.assert_close(masked[..., :23], unpadded, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked[..., :23], unpadded, atol=1e-4)


def test_input_shape_errors_are_user_errors():
    model = FramePrimerUNet(NARROW)
    with pytest.raises(VRDataError, match="expects"):
        model(torch.rand(1, 2, 64, 8))  # Nyquist bin missing
    with pytest.raises(VRDataError, match="frame_mask"):
        model(torch.rand(1, 2, 65, 8), torch.zeros(1, 7, dtype=torch.bool))
    with pytest.raises(VRDataError, match="max_frames"):
        FramePrimerUNet(CHAINED)(torch.rand(1, 2, 65, 65))


def _record_attention_calls(model: torch.nn.Module) -> tuple[list, list]:
    """Hooks that log (module name, previous_scores in, scores out) for every attention call."""
    calls = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, MultiDconvHeadAttention):
            def hook(module, args, output, name=name):
                previous = args[3] if len(args) > 3 else None
                calls.append((name, previous, output[1]))
            handles.append(module.register_forward_hook(hook))
    return calls, handles


def test_residual_attention_chains_carry_the_scores():
    """One chain through the encoder side, one per attention kind on the decoder side."""
    torch.manual_seed(0)
    model = FramePrimerUNet(CHAINED).eval()
    calls, handles = _record_attention_calls(model)
    with torch.inference_mode():
        model(magnitude(CHAINED, 12))
    for handle in handles:
        handle.remove()

    chains = {
        "encoder": [c for c in calls if c[0].startswith("encoder.")],
        "decoder self": [c for c in calls if c[0].endswith("self_attention")],
        "decoder cross": [c for c in calls if c[0].endswith("cross_attention")],
    }
    assert len(chains["encoder"]) == len(chains["decoder self"]) == len(chains["decoder cross"]) == 10
    for kind, chain in chains.items():
        assert chain[0][1] is None, kind
        for (_, _, scores_out), (name, scores_in, _) in zip(chain, chain[1:]):
            assert scores_in is scores_out, f"{kind} chain broken at {name}"
        assert chain[-1][2].shape == (1, CHAINED.num_heads, 12, 12)


@pytest.mark.parametrize("config", ["tiny", CHAINED], ids=["tiny", "chained"])
def test_gradient_reaches_every_parameter(config):
    """In float64, where a mathematically dead parameter shows ~1e-22, not float32 round-off.

    (A key bias, or a bias in front of a LayerNorm, gets exactly zero gradient in theory; in
    float32 round-off made such parameters look alive.) Live parameters here get >= 3e-8.
    """
    torch.manual_seed(0)
    model = build_model(config).double().train()
    mixture = magnitude(model.config, 16, batch=2).double()
    target = torch.rand_like(mixture)
    loss = torch.nn.functional.l1_loss(model(mixture) * mixture, target * mixture)
    loss.backward()
    dead = [name for name, parameter in model.named_parameters()
            if parameter.grad is None or not parameter.grad.abs().max() > 1e-12]
    assert not dead


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = FramePrimerUNet(CHAINED).train()
    checkpointed = FramePrimerUNet(CHAINED, gradient_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    mixture = magnitude(CHAINED, 12)
    plain(mixture).square().mean().backward()
    checkpointed(mixture).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_dropout_is_off_in_eval_and_on_in_train():
    config = CHAINED.replace(dropout=0.5)
    torch.manual_seed(0)
    model = FramePrimerUNet(config)
    mixture = magnitude(config, 8)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(mixture), model(mixture))
        model.train()
        assert not torch.equal(model(mixture), model(mixture))


def test_config_round_trips_through_json():
    for config in [*PRESETS.values(), NARROW]:
        again = FramePrimerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
        assert isinstance(again.channels, tuple)


def test_bad_configs_are_user_errors():
    with pytest.raises(VRDataError, match="unknown"):
        FramePrimerConfig.from_dict({"channels": [4], "depth": 3})
    with pytest.raises(VRDataError, match="one entry per level"):
        FramePrimerConfig(channels=(4, 4), encoder_primers=(1,), decoder_primers=(1, 1))
    with pytest.raises(VRDataError, match="heads"):
        FramePrimerConfig(bins=64, channels=(4,), encoder_primers=(1,), decoder_primers=(1,), num_heads=5)
    with pytest.raises(VRDataError, match="unknown model preset"):
        build_model("frame-primer-xl")


def test_linear_head_is_the_mask_head_without_its_sigmoid():
    torch.manual_seed(0)
    masker = FramePrimerUNet(NARROW).eval()
    linear = FramePrimerUNet(NARROW.replace(head="linear")).eval()
    linear.load_state_dict(masker.state_dict())  # same weights: the head adds no parameters
    loud = magnitude(NARROW, 16) * 50.0
    with torch.inference_mode():
        mask, output = masker(loud), linear(loud)
    assert output.shape == mask.shape == loud.shape
    assert output.min().item() < 0.0 or output.max().item() > 1.0  # unbounded
    torch.testing.assert_close(torch.sigmoid(output), mask)
    assert torch.equal(output[:, :, 64], output[:, :, 63])  # Nyquist replicated as in the mask head


def test_head_defaults_to_mask_and_old_config_dicts_still_load():
    old = NARROW.to_dict()
    del old["head"]  # a config saved before the field existed
    assert FramePrimerConfig.from_dict(old).head == "mask"
    assert FramePrimerConfig.from_dict(NARROW.replace(head="linear").to_dict()).head == "linear"
    with pytest.raises(VRDataError, match="head"):
        NARROW.replace(head="tanh")


def test_config_defaults_are_the_seed_model():
    assert FramePrimerConfig() == PRESETS["frame-primer"]


def test_build_model_accepts_name_config_and_dict():
    tiny = get_config("tiny")
    for spec in ("tiny", tiny, tiny.to_dict()):
        assert build_model(spec).config == tiny


def test_preset_parameter_counts():
    counts = {name: count_parameters(name) for name in PRESETS}
    assert counts["frame-primer"] == 108_190_824  # stated in docs/model.md and `vrtrain presets`
    assert abs(counts["frame-primer"] / SEED_PARAMETERS - 1) < 0.02
    assert counts["tiny"] == 2_698_948
    assert build_model("tiny").num_parameters() == counts["tiny"]


def test_frame_primer_preset_runs_a_short_crop_on_cpu():
    torch.manual_seed(0)
    model = build_model("frame-primer").eval()
    assert model.num_parameters() == 108_190_824
    with torch.inference_mode():
        mask = model(magnitude(model.config, 16))
    assert mask.shape == (1, 2, 1025, 16)
    assert torch.isfinite(mask).all() and 0.0 <= mask.min().item() and mask.max().item() <= 1.0


def test_flops_estimate_runs_on_meta_and_grows_with_frames():
    small, large = forward_flops("tiny", 64), forward_flops("tiny", 128)
    assert 0 < small < large
    assert 2 * small <= large < 3 * small  # convolutions linear in frames, attention quadratic
