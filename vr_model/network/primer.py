"""Frame primer encoder and decoder: one transformer layer over frames, bolted onto a U-Net level.

Each module projects the level's feature map `(batch, channels, bins, frames)` to one channel
with a 1x1 convolution, reads it as a sequence of frames `(batch, frames, bins)` (feature size
= bins at that level), runs one pre-norm transformer layer and returns the result as one new
channel `(batch, 1, bins, frames)`, which the caller appends to the feature map (dense
connections, as in the seed). Feed-forward uses GELU, the seed's deviation from Primer's
squared ReLU.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from vr_model.network.attention import MultiDconvHeadAttention


def _to_frames(channel: Tensor) -> Tensor:
    return channel.squeeze(1).transpose(1, 2)  # (B, 1, F, T) -> (B, T, F)


def _to_channel(frames: Tensor) -> Tensor:
    return frames.transpose(1, 2).unsqueeze(1)  # (B, T, F) -> (B, 1, F, T)


class FeedForward(nn.Module):
    """Position-wise feed-forward: `(batch, frames, bins) -> same`, hidden width expansion x bins."""

    def __init__(self, bins: int, expansion: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(bins, bins * expansion)
        self.contract = nn.Linear(bins * expansion, bins)
        self.dropout = nn.Dropout(dropout)

    def forward(self, frames: Tensor) -> Tensor:
        return self.contract(self.dropout(F.gelu(self.expand(frames))))


class FramePrimerEncoder(nn.Module):
    """Self-attention + feed-forward over the frames of a one-channel projection.

    forward(features `(B, C, F, T)`, padding_mask `(B, T)` bool or None,
    previous_scores `(B, H, T, T)` or None) -> (channel `(B, 1, F, T)`, scores `(B, H, T, T)`).
    """

    def __init__(self, in_channels: int, bins: int, num_heads: int, expansion: int, max_frames: int, dropout: float):
        super().__init__()
        self.project = nn.Conv2d(in_channels, 1, 1)
        self.attention_norm = nn.LayerNorm(bins)
        self.attention = MultiDconvHeadAttention(bins, num_heads, max_frames, dropout)
        self.feed_forward_norm = nn.LayerNorm(bins)
        self.feed_forward = FeedForward(bins, expansion, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, features: Tensor, padding_mask: Tensor | None = None, previous_scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        frames = _to_frames(self.project(features))  # (B, C, F, T) -> (B, T, F)
        attended, scores = self.attention(self.attention_norm(frames), None, padding_mask, previous_scores)
        frames = frames + self.dropout(attended)
        frames = frames + self.dropout(self.feed_forward(self.feed_forward_norm(frames)))
        return _to_channel(frames), scores


class FramePrimerDecoder(nn.Module):
    """Self-attention, cross-attention to the level's skip, feed-forward.

    The cross-attention's keys and values come from the same level's skip `(B, S, F, T)`,
    projected to one channel. forward(features `(B, C, F, T)`, skip `(B, S, F, T)`,
    padding_mask `(B, T)` or None, previous self / cross scores `(B, H, T, T)` or None)
    -> (channel `(B, 1, F, T)`, self scores, cross scores).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, bins: int, num_heads: int, expansion: int,
        max_frames: int, dropout: float,
    ):
        super().__init__()
        self.project = nn.Conv2d(in_channels, 1, 1)
        self.project_skip = nn.Conv2d(skip_channels, 1, 1, bias=False)  # memory_norm would remove a bias
        self.self_attention_norm = nn.LayerNorm(bins)
        self.self_attention = MultiDconvHeadAttention(bins, num_heads, max_frames, dropout)
        self.cross_attention_norm = nn.LayerNorm(bins)
        self.memory_norm = nn.LayerNorm(bins)
        self.cross_attention = MultiDconvHeadAttention(bins, num_heads, max_frames, dropout)
        self.feed_forward_norm = nn.LayerNorm(bins)
        self.feed_forward = FeedForward(bins, expansion, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        features: Tensor,
        skip: Tensor,
        padding_mask: Tensor | None = None,
        previous_self_scores: Tensor | None = None,
        previous_cross_scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        frames = _to_frames(self.project(features))      # (B, C, F, T) -> (B, T, F)
        memory = _to_frames(self.project_skip(skip))      # (B, S, F, T) -> (B, T, F)
        attended, self_scores = self.self_attention(
            self.self_attention_norm(frames), None, padding_mask, previous_self_scores)
        frames = frames + self.dropout(attended)
        attended, cross_scores = self.cross_attention(
            self.cross_attention_norm(frames), self.memory_norm(memory), padding_mask, previous_cross_scores)
        frames = frames + self.dropout(attended)
        frames = frames + self.dropout(self.feed_forward(self.feed_forward_norm(frames)))
        return _to_channel(frames), self_scores, cross_scores
