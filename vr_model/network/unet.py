"""The frame primer U-Net: magnitude spectrogram in, sigmoid instrumental mask out.

Level `l` works on `bins / 2**l` bins and on every frame (time is never downsampled):

    input (B, 2, 1024, T)
    encoder level 0: residual blocks (stride 1)             -> (B, c0, 1024, T), + te0 primer channels = skip 0
    encoder level l: residual blocks, stride 2x1 in the last -> (B, cl, 1024/2**l, T), + tel channels = skip l
    decoder level l (deepest first): td_l primer decoders cross-attending to skip l,
        bilinear 2x1 upsampling, concatenation with skip l-1, residual blocks -> (B, c(l-1), ...)
    decoder level 0: td_0 primer decoders cross-attending to skip 0, concatenation with the
        input magnitude (no upsampling: it is already full resolution), residual blocks
    1x1 conv to 2 channels, sigmoid

This is the wiring of the public fork the seed describes: five encoder and five decoder levels
make four halvings of frequency, and the first level runs at full resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from vr_data.errors import VRDataError
from vr_model.network.config import FramePrimerConfig
from vr_model.network.layers import ResidualBlock, pointwise_conv2d
from vr_model.network.primer import FramePrimerDecoder, FramePrimerEncoder


def _skip_channels(config: FramePrimerConfig, level: int) -> int:
    return config.channels[level] + config.encoder_primers[level]


class EncoderLevel(nn.Module):
    """Residual blocks (the frequency stride in the last), then densely connected primer encoders.

    forward(features `(B, C_in, 2F, T)` or `(B, C_in, F, T)` at level 0, keep `(B, 1, 1, T)`,
    padding_mask `(B, T)`, scores `(B, H, T, T)` or None)
    -> (skip `(B, c_l + te_l, F, T)`, scores).
    """

    def __init__(self, config: FramePrimerConfig, level: int):
        super().__init__()
        in_channels = config.in_channels if level == 0 else _skip_channels(config, level - 1)
        in_bins = config.level_bins(max(level - 1, 0))
        stride = 1 if level == 0 else 2
        width = config.channels[level]
        count = config.res_blocks
        self.blocks = nn.ModuleList(
            ResidualBlock(in_channels if i == 0 else width, width, in_bins, config.kernel_size,
                          stride if i == count - 1 else 1)
            for i in range(count)
        )
        self.primers = nn.ModuleList(
            FramePrimerEncoder(width + j, config.level_bins(level), config.num_heads,
                               config.feedforward_expansion, config.max_frames, config.dropout)
            for j in range(config.encoder_primers[level])
        )

    def forward(
        self, features: Tensor, keep: Tensor | None, padding_mask: Tensor | None, scores: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        for block in self.blocks:
            features = block(features, keep)
        for primer in self.primers:
            channel, scores = primer(features, padding_mask, scores)
            features = torch.cat((features, channel), dim=1)  # one more channel per primer
        return features, scores


class DecoderLevel(nn.Module):
    """Densely connected primer decoders, then 2x1 upsampling, concat with the next skip, blocks.

    forward(features `(B, C, F, T)`, skip `(B, S, F, T)` (same level, for cross-attention),
    next_skip `(B, S', 2F, T)` (level l-1; the input magnitude at level 0, where no upsampling
    happens), keep, padding_mask, self_scores, cross_scores)
    -> (features `(B, c_(l-1), 2F, T)`, self_scores, cross_scores).
    """

    def __init__(self, config: FramePrimerConfig, level: int):
        super().__init__()
        deepest = level == config.levels - 1
        in_channels = _skip_channels(config, level) if deepest else config.channels[level]
        bins = config.level_bins(level)
        self.primers = nn.ModuleList(
            FramePrimerDecoder(in_channels + j, _skip_channels(config, level), bins, config.num_heads,
                               config.feedforward_expansion, config.max_frames, config.dropout)
            for j in range(config.decoder_primers[level])
        )
        self.upsamples = level > 0
        target = max(level - 1, 0)
        next_skip = config.in_channels if level == 0 else _skip_channels(config, target)
        width = config.channels[target]
        concat = in_channels + config.decoder_primers[level] + next_skip
        self.blocks = nn.ModuleList(
            ResidualBlock(concat if i == 0 else width, width, config.level_bins(target), config.kernel_size)
            for i in range(config.res_blocks)
        )

    def forward(
        self,
        features: Tensor,
        skip: Tensor,
        next_skip: Tensor,
        keep: Tensor | None,
        padding_mask: Tensor | None,
        self_scores: Tensor | None,
        cross_scores: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        for primer in self.primers:
            channel, self_scores, cross_scores = primer(features, skip, padding_mask, self_scores, cross_scores)
            features = torch.cat((features, channel), dim=1)  # one more channel per primer
        if self.upsamples:
            features = F.interpolate(features, scale_factor=(2, 1), mode="bilinear", align_corners=True)  # F -> 2F
        features = torch.cat((features, next_skip), dim=1)
        for block in self.blocks:
            features = block(features, keep)
        return features, self_scores, cross_scores


class FramePrimerUNet(nn.Module):
    """The frame primer U-Net (seed architecture).

    forward(magnitude `(B, in_channels, bins + 1, T)`, frame_mask `(B, T)` bool or None)
    -> mask `(B, in_channels, bins + 1, T)` in [0, 1] (`config.head == "mask"`), or the
    unbounded output of the last 1x1 convolution (`config.head == "linear"`).

    The magnitude is expected normalised as in training (`vr_data.mixer.normalisation`: each crop
    scaled the way the mixer scaled it). The Nyquist bin is dropped on the way in and the
    mask of the last kept bin is replicated for it on the way out. `frame_mask` marks padded
    frames (True = padding) at the end of a crop: they are never attended to and are zeroed
    in front of every convolution, so the mask on the real frames equals the mask of the
    unpadded crop. `T` may be anything from 1 to `config.max_frames`.

    `gradient_checkpointing = True` keeps only each level's inputs for backward and recomputes
    the level (about a third more compute for a fraction of the activation memory); it is a
    run-time choice, not part of the config, and does not change the weights.
    """

    def __init__(self, config: FramePrimerConfig, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = gradient_checkpointing
        self.encoder = nn.ModuleList(EncoderLevel(config, level) for level in range(config.levels))
        self.decoder = nn.ModuleList(DecoderLevel(config, level) for level in reversed(range(config.levels)))
        self.out = nn.Conv2d(config.channels[0], config.in_channels, 1)

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def _run(self, level: nn.Module, *inputs):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(level, *inputs, use_reentrant=False)
        return level(*inputs)

    def forward(self, magnitude: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        config = self.config
        batch, channels, bins, frames = magnitude.shape
        if channels != config.in_channels or bins != config.bins + 1:
            raise VRDataError(None, f"model expects (batch, {config.in_channels}, {config.bins + 1}, frames), "
                                    f"got {tuple(magnitude.shape)}")
        if frame_mask is not None and frame_mask.shape != (batch, frames):
            raise VRDataError(None, f"frame_mask must be (batch, frames) = {(batch, frames)}, got {tuple(frame_mask.shape)}")
        keep = None if frame_mask is None else (~frame_mask).to(magnitude.dtype)[:, None, None, :]  # (B, 1, 1, T)

        features = magnitude[:, :, : config.bins]  # drop Nyquist: (B, C, bins + 1, T) -> (B, C, bins, T)
        if keep is not None:
            features = features * keep
        mixture = features

        skips = []
        scores = None
        for level in self.encoder:
            features, scores = self._run(level, features, keep, frame_mask, scores)
            skips.append(features)

        self_scores = cross_scores = None
        for index, level in enumerate(self.decoder):
            depth = config.levels - 1 - index
            next_skip = skips[depth - 1] if depth > 0 else mixture
            features, self_scores, cross_scores = self._run(
                level, features, skips[depth], next_skip, keep, frame_mask, self_scores, cross_scores)

        output = pointwise_conv2d(features, self.out.weight, self.out.bias)  # (B, C, bins, T)
        if config.head == "mask":
            output = torch.sigmoid(output)
        return torch.cat((output, output[:, :, -1:]), dim=2)  # restore Nyquist: (B, C, bins + 1, T)
