"""Frame convolutions: the per-frame LayerNorm and its hand-written backward, residual blocks."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from vr_model.network.layers import FrameConv, FrameNorm, ResidualBlock, _FrameNormFunction, _ShippedFrameNormFunction


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


def test_frame_norm_fast_statistics_match_the_shipped_welford_ones():
    """Two-pass sums instead of var_mean: outputs and all three gradients agree to round-off,
    also where the mean is 1000 standard deviations away from zero (cancellation)."""
    torch.manual_seed(0)
    for offset in (0.0, 1000.0):
        features = torch.randn(2, 3, 16, 7) + offset
        weight, bias, grad = torch.randn(3, 16, 1), torch.randn(3, 16, 1), torch.randn(2, 3, 16, 7)
        results = []
        for function in (_FrameNormFunction, _ShippedFrameNormFunction):
            inputs = [tensor.clone().requires_grad_() for tensor in (features, weight, bias)]
            out = function.apply(*inputs, 1e-5)
            out.backward(grad)
            results.append([out.detach()] + [tensor.grad for tensor in inputs])
        for fast, shipped in zip(*results):
            torch.testing.assert_close(fast, shipped, rtol=1e-4, atol=1e-4)


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


def test_strided_skip_is_the_strided_1x1_convolution():
    torch.manual_seed(0)
    block = ResidualBlock(3, 4, 16, stride=2)
    features = torch.randn(2, 3, 16, 5)
    torch.testing.assert_close(block._skip(features), block.skip(features))


def test_strided_block_backward_on_channels_last_features_with_few_channels():
    """PyTorch 2.13's weight gradient of a strided 1x1 convolution on channels-last tensors with
    fewer than 8 input channels corrupts the heap (the "double free" under torch.compile, which
    makes convolutions channels-last); the block subsamples first, so this runs and is right."""
    torch.manual_seed(0)
    block = ResidualBlock(3, 4, 64, stride=2)
    features = torch.randn(2, 3, 64, 32)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        inputs = features.clone().contiguous(memory_format=memory_format).requires_grad_()
        block.zero_grad(set_to_none=True)
        block(inputs).square().sum().backward()
        results.append((inputs.grad.contiguous(), block.skip.weight.grad.clone()))
    for contiguous, channels_last in zip(*results):
        torch.testing.assert_close(channels_last, contiguous, rtol=1e-4, atol=1e-4)


def _conv_and_gradients(function, features, *parameters):
    features = features.clone().requires_grad_()
    output = function(features)
    grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad(output, (features, *parameters), grad_output)
    return output.detach(), grads


def test_backward_data_kernel_convolution_equals_conv2d_with_gradients():
    from vr_model.network.layers import _BackwardDataConvFunction, frame_conv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(10, 8, 3, padding=1, bias=False)
    features = torch.randn(2, 10, 32, 20)
    called = []
    original = _BackwardDataConvFunction.apply
    try:
        _BackwardDataConvFunction.apply = lambda *args: called.append(1) or original(*args)
        fast, fast_grads = _conv_and_gradients(lambda x: frame_conv2d(x, conv), features, conv.weight)
    finally:
        _BackwardDataConvFunction.apply = original
    reference, reference_grads = _conv_and_gradients(conv, features, conv.weight)
    assert called, "the backward-data kernel path was not taken"
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(fast_grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frame_conv2d_keeps_conv2d_for_strides_few_channels_and_autocast():
    from vr_model.network import layers

    torch.manual_seed(0)
    cases = [
        (torch.nn.Conv2d(8, 8, 3, stride=(2, 1), padding=1, bias=False), torch.randn(1, 8, 16, 6)),
        (torch.nn.Conv2d(2, 8, 3, padding=1, bias=False), torch.randn(1, 2, 16, 6)),
    ]
    original = layers._BackwardDataConvFunction.apply
    try:
        layers._BackwardDataConvFunction.apply = lambda *args: (_ for _ in ()).throw(AssertionError("fast path"))
        for conv, features in cases:
            torch.testing.assert_close(layers.frame_conv2d(features, conv), conv(features))
        conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layers.frame_conv2d(torch.randn(1, 8, 16, 6), conv).dtype == torch.bfloat16
    finally:
        layers._BackwardDataConvFunction.apply = original


def test_pointwise_conv_as_matrix_products_equals_1x1_conv2d_with_gradients():
    from vr_model.network.layers import pointwise_conv2d

    torch.manual_seed(0)
    features = torch.randn(3, 6, 8, 5)
    for bias in (None, torch.randn(4, requires_grad=True)):
        weight = torch.randn(4, 6, 1, 1, requires_grad=True)
        parameters = (weight,) if bias is None else (weight, bias)
        fast, fast_grads = _conv_and_gradients(lambda x: pointwise_conv2d(x, weight, bias), features, *parameters)
        reference, reference_grads = _conv_and_gradients(lambda x: F.conv2d(x, weight, bias), features, *parameters)
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
        for got, want in zip(fast_grads, reference_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
