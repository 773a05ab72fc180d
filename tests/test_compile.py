"""torch.compile (inductor, CPU) gives the eager model's loss, gradients and inference output."""

from __future__ import annotations

import os

import pytest
import torch

from vr_model import FramePrimerConfig, FramePrimerUNet, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two levels (one halving, upsampling, both concatenations), a primer encoder and decoder per
# level (self- and cross-attention, the residual score chains), FrameNorm everywhere: every
# kind of layer of the frame primer, in a graph small enough to compile quickly.
SMALL = FramePrimerConfig(bins=64, channels=(2, 3), encoder_primers=(1, 1), decoder_primers=(1, 1), num_heads=2,
                          feedforward_expansion=1, max_frames=64, dropout=0.0)


def loss_and_gradients(model: FramePrimerUNet, forward, mixture, instrumental, frame_mask):
    loss = torch.nn.functional.l1_loss(forward(mixture, frame_mask) * mixture, instrumental)
    loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), gradients


def check_compiled_equals_eager(model: FramePrimerUNet, batch: int, frames: int, inference: bool = True) -> None:
    config = model.config
    generator = torch.Generator().manual_seed(1)
    mixture = torch.rand(batch, config.in_channels, config.bins + 1, frames, generator=generator)
    instrumental = mixture * torch.rand(mixture.shape, generator=generator)
    frame_mask = torch.zeros(batch, frames, dtype=torch.bool)
    frame_mask[0, frames - 5:] = True  # one padded crop: the masks go through the graph too
    compiled = torch.compile(model)

    model.train()
    eager_loss, eager_gradients = loss_and_gradients(model, model, mixture, instrumental, frame_mask)
    compiled_loss, compiled_gradients = loss_and_gradients(model, compiled, mixture, instrumental, frame_mask)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-7)
    for name, gradient in eager_gradients.items():
        assert gradient.abs().max() > 0, name  # a gradient that vanished in both would prove nothing
        torch.testing.assert_close(compiled_gradients[name], gradient, rtol=1e-3, atol=1e-6, msg=name)

    if not inference:
        return
    model.eval()
    with torch.inference_mode():
        eager_mask = model(mixture, frame_mask)
        compiled_mask = compiled(mixture, frame_mask)
    torch.testing.assert_close(compiled_mask, eager_mask, rtol=1e-4, atol=1e-6)


# Inductor compiles every kernel with a C++ compiler: on a fresh cache and two busy cores the
# small model took 12 minutes and `tiny` 17 (glibc's heap checks on, both passed).
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_small_model_gives_eager_loss_gradients_and_inference():
    torch.manual_seed(0)
    check_compiled_equals_eager(FramePrimerUNet(SMALL), batch=2, frames=24)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("VR_TEST_COMPILE_TINY") != "1",
                    reason="8-17 min of cold compilation here; VR_TEST_COMPILE_TINY=1 runs it")
def test_compiled_tiny_gives_eager_loss_and_gradients():
    torch.manual_seed(0)
    check_compiled_equals_eager(build_model("tiny"), batch=2, frames=32, inference=False)
