"""Frame convolutions: the convolutional pieces of the frame primer U-Net.

Feature maps are `(batch, channels, bins, frames)`. Normalisation is per frame (over channels x
bins), so nothing mixes statistics across time and a frame's output does not depend on how long
the crop is. An optional `keep` tensor `(batch, 1, 1, frames)` (1.0 = real frame, 0.0 = padding)
zeroes padded frames in front of every convolution, so a padded crop gives exactly the output
of the unpadded crop on its real frames.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


# The fast CPU paths of this package (FrameNorm's statistics, see below) can be switched off to
# reproduce the step as first shipped: benchmarks/bench_model.py measures both in one run.
_FAST_PATHS = True


def set_fast_paths(enabled: bool) -> None:
    """Use the fast implementations (default) or the shipped ones; results agree to float round-off."""
    global _FAST_PATHS
    _FAST_PATHS = bool(enabled)


def _precise(flat: Tensor) -> Tensor:
    return flat.to(torch.promote_types(flat.dtype, torch.float32))


class _FrameNormFunction(torch.autograd.Function):
    """Per-frame LayerNorm that saves only its input and the (B, 1, T) statistics for backward.

    Written out as elementwise tensor ops, autograd kept about three extra full-size maps per
    norm alive for backward (the tiny preset's peak RSS at 1024 frames went from 3.1 to 4.1 GB);
    the input is kept alive by the residual skip anyway, so saving it costs nothing.

    Statistics are sums over dim 1 of the `(B, C*F, T)` view: the mean, then the deviations
    from it and their squares (the corrected two-pass algorithm). The reductions run along
    contiguous rows of T frames, which vectorises; `torch.var_mean` over that dim (Welford,
    one element at a time) took 57 ms for a (4, 8192, 256) map against about 13 ms here, and
    was a fifth of the `tiny` step. Summing deviations from the mean is as safe from
    cancellation as Welford (tested with the mean 1000 standard deviations from zero).
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        batch, channels, bins, frames = features.shape
        count = channels * bins
        flat = _precise(features.reshape(batch, count, frames))              # (B, C*F, T)
        rough_mean = flat.sum(dim=1, keepdim=True).div_(count)               # (B, 1, T)
        centered = flat - rough_mean
        # The float32 sum leaves the mean off by ~1e-7 of its size; the deviations' own mean
        # measures that error and corrects the mean and the variance (corrected two-pass).
        correction = centered.sum(dim=1, keepdim=True).div_(count)           # (B, 1, T)
        squares = torch.linalg.vecdot(centered, centered, dim=1).unsqueeze(1).div_(count)
        rstd = (squares - correction.square()).clamp_min_(0.0).add_(eps).rsqrt_()
        mean = rough_mean + correction
        # (centered - correction) * rstd in one pass: centered * rstd + (-correction * rstd).
        normalised = torch.addcmul(correction.mul(rstd).neg_(), centered, rstd, out=centered)
        normalised = normalised.view(batch, channels, bins, frames)
        ctx.save_for_backward(features, weight, mean, rstd)
        # addcmul into its own input: one pass, no new map (weight and bias broadcast over B, T).
        return torch.addcmul(bias, normalised, weight, out=normalised).to(features.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        features, weight, mean, rstd = ctx.saved_tensors
        batch, channels, bins, frames = features.shape
        count = channels * bins
        normalised = (_precise(features.reshape(batch, count, frames)) - mean).mul_(rstd)  # (B, C*F, T)
        grad_flat = _precise(grad_output.reshape(batch, count, frames))
        grad_weight = grad_bias = grad_features = None
        if ctx.needs_input_grad[1]:  # sum over B and T: dot products along contiguous frame rows
            grad_weight = torch.linalg.vecdot(grad_flat, normalised, dim=2).sum(dim=0).view_as(weight)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_flat.sum(dim=(0, 2)).view_as(weight)
        if ctx.needs_input_grad[0]:
            grad_normalised = grad_flat * weight.reshape(1, count, 1)
            # d/dx of (x - mean) * rstd, summed over the frame's C*F features:
            # rstd * (g - mean(g) - normalised * mean(g * normalised)).
            mean_grad = grad_normalised.sum(dim=1, keepdim=True).div_(count)
            mean_projection = torch.linalg.vecdot(grad_normalised, normalised, dim=1).unsqueeze(1).div_(count)
            grad_features = torch.addcmul(grad_normalised.sub_(mean_grad), normalised, mean_projection, value=-1,
                                          out=grad_normalised).mul_(rstd)
            grad_features = grad_features.view_as(features).to(features.dtype)
        return grad_features, grad_weight, grad_bias, None


def frame_norm(features: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """`_FrameNormFunction` in plain differentiable ops: what `torch.compile` traces.

    Inductor fuses these into a few loops and derives the backward itself (keeping what it
    chooses to keep). The statistics are sums, not `var_mean`: inductor's CPU Welford kernels
    are where its heap-corruption bugs after convolutions were reported (pytorch#181618,
    #181689), and sums fuse as well. Same shapes and dtypes as `FrameNorm`.
    """
    batch, channels, bins, frames = features.shape
    count = channels * bins
    flat = _precise(features.reshape(batch, count, frames))                 # (B, C*F, T)
    rough_mean = flat.sum(dim=1, keepdim=True) / count
    centered = flat - rough_mean
    correction = centered.sum(dim=1, keepdim=True) / count
    variance = (centered * centered).sum(dim=1, keepdim=True) / count - correction * correction
    normalised = (centered - correction) * torch.rsqrt(variance.clamp_min(0.0) + eps)
    out = torch.addcmul(bias, normalised.view(batch, channels, bins, frames), weight)
    return out.to(features.dtype)


def _shipped_frame_statistics(flat: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and 1/std over dim 1 of `(B, C*F, T)`, in float32 at least: `(B, 1, T)` each."""
    variance, mean = torch.var_mean(_precise(flat), dim=1, keepdim=True, correction=0)
    return mean, torch.rsqrt(variance + eps)


class _ShippedFrameNormFunction(torch.autograd.Function):
    """`_FrameNormFunction` as first shipped (Welford statistics): the benchmarks' baseline."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        batch, channels, bins, frames = features.shape
        flat = features.reshape(batch, channels * bins, frames)
        mean, rstd = _shipped_frame_statistics(flat, eps)
        normalised = ((flat - mean) * rstd).view(batch, channels, bins, frames)
        ctx.save_for_backward(features, weight, mean, rstd)
        return torch.addcmul(bias, normalised, weight).to(features.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        features, weight, mean, rstd = ctx.saved_tensors
        batch, channels, bins, frames = features.shape
        normalised = (features.reshape(batch, channels * bins, frames) - mean) * rstd  # (B, C*F, T)
        grad_flat = grad_output.reshape(batch, channels * bins, frames).to(rstd.dtype)
        grad_normalised = grad_flat * weight.reshape(1, channels * bins, 1)
        grad_features = rstd * (
            grad_normalised
            - grad_normalised.mean(dim=1, keepdim=True)
            - normalised * (grad_normalised * normalised).mean(dim=1, keepdim=True)
        )
        grad_weight = (grad_flat * normalised).sum(dim=(0, 2)).view_as(weight) if ctx.needs_input_grad[1] else None
        grad_bias = grad_flat.sum(dim=(0, 2)).view_as(weight) if ctx.needs_input_grad[2] else None
        grad_features = grad_features.view_as(features).to(features.dtype) if ctx.needs_input_grad[0] else None
        return grad_features, grad_weight, grad_bias, None


def _fast_cpu_path(features: Tensor) -> bool:
    """Whether the eager float32 CPU kernels below apply (not under compile, tracing or autocast)."""
    return (
        _FAST_PATHS
        and features.device.type == "cpu"
        and features.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.is_autocast_enabled("cpu")
    )


class _BackwardDataConvFunction(torch.autograd.Function):
    """A stride-1 'same' convolution whose forward runs oneDNN's backward-data kernel.

    `conv2d(x, w, padding=p)` equals `conv_transpose2d(x, w', padding=p)` with `w'` the kernel
    flipped in both spatial axes and with its in/out channels swapped. On the CPU, oneDNN's
    forward kernel is slow for inputs of 8 or more channels in the NCHW layout (it reorders
    them to its blocked layout and back), while its backward-data kernel, which
    `conv_transpose2d` runs, is not: 38 -> 24 ms for 8 -> 8 channels at (4, 1024 bins, 256
    frames), 68 -> 41 ms for 16 -> 8 (docs/performance.md, "model step"). The backward is the
    convolution's own (`aten.convolution_backward`), so gradients are those of `conv2d`; the
    output agrees with `conv2d` to float round-off (about 6e-7 relative).
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(features, weight)
        ctx.padding = padding
        transposed = weight.flip(2, 3).transpose(0, 1).contiguous()  # (C_in, C_out, kh, kw)
        return F.conv_transpose2d(features, transposed, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        features, weight = ctx.saved_tensors
        grad_features, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_output.contiguous(), features, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )
        return grad_features, grad_weight, None


# Below this many input channels oneDNN's forward kernel is the faster one (2 -> 8 channels:
# 10 ms forward, 34 ms through the backward-data kernel).
_BACKWARD_DATA_MIN_CHANNELS = 8


def frame_conv2d(features: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv(features)`, through the faster oneDNN kernel where the CPU fast paths apply.

    `(batch, in_channels, bins, frames) -> (batch, out_channels, bins // stride, frames)`.
    Stride-1 'same' convolutions without bias and with at least 8 input channels take
    `_BackwardDataConvFunction`; everything else (strides, GPUs, compile, export) is `conv`.
    """
    if (
        conv.bias is None
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.padding == (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
        and conv.kernel_size[0] % 2 == 1 and conv.kernel_size[1] % 2 == 1
        and conv.in_channels >= _BACKWARD_DATA_MIN_CHANNELS
        and _fast_cpu_path(features)
    ):
        return _BackwardDataConvFunction.apply(features.contiguous(), conv.weight, conv.padding)
    return conv(features)


class _PointwiseConvFunction(torch.autograd.Function):
    """A 1x1 convolution as batched matrix products over the `(batch, channels, bins * frames)` view.

    Single-threaded 1x1 convolutions go to PyTorch's reference kernel, whose backward took
    34 ms for 16 -> 8 channels at (4, 1024, 256); two matrix products take 24 ms. Same
    results to float round-off.
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        batch, channels, bins, frames = features.shape
        matrix = weight.reshape(weight.shape[0], channels)                     # (C_out, C_in)
        flat = features.reshape(batch, channels, bins * frames)                 # (B, C_in, N)
        ctx.save_for_backward(features, weight)
        ctx.has_bias = bias is not None
        output = torch.bmm(matrix.expand(batch, *matrix.shape), flat)          # (B, C_out, N)
        if bias is not None:
            output.add_(bias.view(1, -1, 1))
        return output.view(batch, -1, bins, frames)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        features, weight = ctx.saved_tensors
        batch, channels, bins, frames = features.shape
        matrix = weight.reshape(weight.shape[0], channels)
        grad_flat = grad_output.reshape(batch, -1, bins * frames)                # (B, C_out, N)
        grad_features = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.bmm(matrix.t().expand(batch, channels, -1), grad_flat).view_as(features)
        if ctx.needs_input_grad[1]:
            flat = features.reshape(batch, channels, bins * frames)
            grad_weight = torch.bmm(grad_flat, flat.transpose(1, 2)).sum(dim=0).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_flat.sum(dim=(0, 2))
        return grad_features, grad_weight, grad_bias


def pointwise_conv2d(features: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.conv2d(features, weight, bias)` for a 1x1 kernel at stride 1, as matrix products on the CPU.

    `(batch, in_channels, bins, frames) -> (batch, out_channels, bins, frames)`.
    """
    if weight.shape[2:] == (1, 1) and _fast_cpu_path(features):
        return _PointwiseConvFunction.apply(features.contiguous(), weight, bias)
    return F.conv2d(features, weight, bias)


class FrameNorm(nn.Module):
    """LayerNorm over (channels x bins) of each frame, with a per-(channel, bin) affine.

    `(batch, channels, bins, frames) -> same shape`. Statistics are computed in float32;
    reducing over dim 1 of a `(B, C*F, T)` view keeps the layout the convolutions want
    (permuting to frames-first for `F.layer_norm` cost two large copies per call).
    """

    def __init__(self, channels: int, bins: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, bins, 1))
        self.bias = nn.Parameter(torch.zeros(channels, bins, 1))

    def forward(self, features: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return frame_norm(features, self.weight, self.bias, self.eps)
        function = _FrameNormFunction if _FAST_PATHS else _ShippedFrameNormFunction
        return function.apply(features.contiguous(), self.weight, self.bias, self.eps)


class FrameConv(nn.Module):
    """Pre-activation convolution: FrameNorm, GELU, then Conv2d without bias.

    `(batch, in_channels, bins, frames) -> (batch, out_channels, bins // stride, frames)`.
    The stride is along frequency only: time is never downsampled.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.norm = FrameNorm(in_channels, bins)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=(stride, 1), padding=kernel_size // 2, bias=False,
        )

    def forward(self, features: Tensor, keep: Tensor | None = None) -> Tensor:
        hidden = F.gelu(self.norm(features))
        if keep is not None:
            hidden = hidden * keep  # padded frames must look like the conv's own zero padding
        return frame_conv2d(hidden, self.conv)


class ResidualBlock(nn.Module):
    """Two frame convolutions with a skip; a 1x1 projection on the skip when the shape changes.

    `(batch, in_channels, bins, frames) -> (batch, out_channels, bins // stride, frames)`;
    the stride sits in the second convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv1 = FrameConv(in_channels, out_channels, bins, kernel_size)
        self.conv2 = FrameConv(out_channels, out_channels, bins, kernel_size, stride)
        reshapes = in_channels != out_channels or stride != 1
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1), bias=False) if reshapes else nn.Identity()

    def forward(self, features: Tensor, keep: Tensor | None = None) -> Tensor:
        hidden = self.conv2(self.conv1(features, keep), keep)
        return hidden + self._skip(features)

    def _skip(self, features: Tensor) -> Tensor:
        if not isinstance(self.skip, nn.Conv2d):
            return features
        stride = self.skip.stride[0]
        # A strided skip subsamples, then applies the 1x1 convolution: the same numbers as the
        # strided 1x1 convolution. PyTorch 2.13's CPU convolution_backward of a strided 1x1
        # convolution on channels-last tensors with fewer than 8 input channels writes past its
        # buffers (glibc aborts with "double free or corruption" or "free(): invalid next size";
        # tcmalloc corrupts silently), and inductor turns convolutions channels-last.
        return pointwise_conv2d(features[:, :, ::stride] if stride > 1 else features, self.skip.weight)
