"""Frame convolutions: the per-frame LayerNorm and its hand-written backward, residual blocks."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from vr_model.layers import FrameConv, FrameNorm, ResidualBlock, _FrameNormFunction


def test_frame_norm_matches_layer_norm_over_channels_and_bins():
    torch.manual_seed(0)
    norm = FrameNorm(3, 8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    features = torch.randn(2, 3, 8, 5) * 4 + 1
    reference = F.layer_norm(features.permute(0, 3, 1, 2), (3, 8), norm.weight[..., 0], norm.bias[..., 0])
    torch.testing.assert_close(norm(features), reference.permute(0, 2, 3, 1))


def test_frame_norm_backward_passes_gradcheck():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True)
    weight = torch.randn(3, 4, 1, dtype=torch.double, requires_grad=True)
    bias = torch.randn(3, 4, 1, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _FrameNormFunction.apply(x, w, b, 1e-5), (features, weight, bias))


def test_frame_norm_keeps_low_precision_inputs_low_precision():
    norm = FrameNorm(2, 4)
    features = torch.randn(1, 2, 4, 3, dtype=torch.bfloat16, requires_grad=True)
    out = norm(features)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert features.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32


def test_frame_conv_and_residual_block_shapes():
    features = torch.randn(2, 4, 16, 7)
    assert FrameConv(4, 6, 16)(features).shape == (2, 6, 16, 7)
    assert FrameConv(4, 6, 16, stride=2)(features).shape == (2, 6, 8, 7)  # frequency halves, time stays
    assert ResidualBlock(4, 6, 16, stride=2)(features).shape == (2, 6, 8, 7)
    assert isinstance(ResidualBlock(4, 4, 16).skip, torch.nn.Identity)
