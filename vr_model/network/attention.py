"""Multi-dconv-head attention over frames, with relative positions and residual scores.

Three published ideas, as the seed combines them:
- Primer (So et al. 2021): queries, keys and values each pass a linear layer and then a
  depthwise 3-tap convolution along time, per feature (so per head).
- Music Transformer (Huang et al. 2018): a learned embedding per relative distance; the
  query-position logits are computed for all 2T-1 distances with one matmul and moved into
  place with the memory-efficient "skew" (pad/reshape/slice), never a (T, T, head_dim) tensor.
  Bidirectional: distances -(T-1)..(T-1), so any crop up to `max_frames` works.
- RealFormer (He et al. 2020): a layer adds the previous layer's pre-softmax scores to its
  own and hands its scores to the next layer.

Sequences are `(batch, frames, features)`; scores are `(batch, heads, frames, frames)`.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vr_data.errors import VRDataError


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off for `device_type` (a no-op where autocast does not exist, e.g. meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def skew(relative_logits: Tensor) -> Tensor:
    """Move logits indexed by relative distance into (query, key) position.

    `(..., T, 2T-1) -> (..., T, T)`, where input column `r` is distance `r - (T-1)` and
    `out[..., i, j] = relative_logits[..., i, j - i + T - 1]`.

    Padding each row with one column and re-reading the flat buffer with rows of 2T-1 shifts
    row i left by i; the first T*(2T-1) elements suffice, so the second pad of the causal
    version is not needed.
    """
    *lead, frames, width = relative_logits.shape
    if width != 2 * frames - 1:
        raise ValueError(f"skew expects (..., T, 2T-1), got {tuple(relative_logits.shape)}")
    padded = F.pad(relative_logits, (0, 1))                      # (..., T, 2T)
    flat = padded.reshape(*lead, 2 * frames * frames)            # (..., 2T*T)
    rows = flat[..., : frames * width].reshape(*lead, frames, width)  # (..., T, 2T-1), row i shifted by i
    return rows[..., frames - 1:]                                # (..., T, T)


class DconvProjection(nn.Module):
    """Linear layer, then a depthwise convolution along time (Primer's dconv).

    `(batch, frames, features) -> (batch, frames, features)`; `keep` `(batch, frames, 1)`
    zeroes padded frames before the convolution so they do not leak into real neighbours.
    """

    def __init__(self, features: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(features, features, bias=False)
        self.dconv = nn.Conv1d(features, features, kernel_size, padding=kernel_size // 2, groups=features, bias=bias)

    def forward(self, frames: Tensor, keep: Tensor | None = None) -> Tensor:
        hidden = self.linear(frames)
        if keep is not None:
            hidden = hidden * keep
        return self.dconv(hidden.transpose(1, 2)).transpose(1, 2)  # conv wants (batch, features, frames)


class MultiDconvHeadAttention(nn.Module):
    """Multi-head attention with dconv projections, relative positions and residual scores.

    forward(frames `(B, T, F)`, memory `(B, T, F)` or None for self-attention,
    padding_mask `(B, T)` bool (True = padded frame, never attended to),
    previous_scores `(B, H, T, T)` or None) -> (output `(B, T, F)`, scores `(B, H, T, T)`).

    The returned scores are pre-softmax and pre-mask (the mask is applied afresh in every
    layer). Scores and softmax run in float32 (float64 in a float64 model) even under
    autocast: the residual chain sums them over many layers. Keys have no bias (it would add
    the same q . b to a whole row of scores, which softmax ignores). Relative embeddings
    `(2 * max_frames - 1, head_dim)` are shared by the heads (as in Shaw et al. and the seed's
    fork) to keep their size independent of the number of heads.
    """

    def __init__(self, features: int, num_heads: int, max_frames: int, dropout: float = 0.0):
        super().__init__()
        if features % num_heads:
            raise ValueError(f"{features} features do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = features // num_heads
        self.max_frames = max_frames
        self.dropout = dropout
        self.query = DconvProjection(features)
        # A key bias adds the same q . b to every key of a query's row: softmax ignores it.
        self.key = DconvProjection(features, bias=False)
        self.value = DconvProjection(features)
        self.out = nn.Linear(features, features)
        # Row max_frames - 1 + d is the embedding of distance d = key frame - query frame.
        self.relative_embeddings = nn.Parameter(torch.randn(2 * max_frames - 1, self.head_dim) * 0.02)

    def relative_window(self, frames: int) -> Tensor:
        """Embeddings of distances -(frames-1)..(frames-1): `(2 * frames - 1, head_dim)`."""
        if frames > self.max_frames:
            raise VRDataError(None, f"{frames} frames exceed the model's max_frames {self.max_frames}")
        return self.relative_embeddings[self.max_frames - frames: self.max_frames + frames - 1]

    def _heads(self, sequence: Tensor) -> Tensor:
        batch, frames, _ = sequence.shape
        return sequence.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        frames: Tensor,
        memory: Tensor | None = None,
        padding_mask: Tensor | None = None,
        previous_scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        batch, length, features = frames.shape
        source = frames if memory is None else memory
        keep = None if padding_mask is None else (~padding_mask).to(frames.dtype).unsqueeze(-1)  # (B, T, 1)
        queries = self._heads(self.query(frames, keep))
        keys = self._heads(self.key(source, keep))
        values = self._heads(self.value(source, keep))
        out_dtype = values.dtype

        precise = torch.promote_types(out_dtype, torch.float32)
        with full_precision(frames.device.type):
            queries, keys, values = queries.to(precise), keys.to(precise), values.to(precise)
            content = queries @ keys.transpose(-1, -2)                              # (B, H, T, T)
            window = self.relative_window(length).to(precise)                       # (2T-1, D)
            position = skew(queries @ window.t())                                   # (B, H, T, 2T-1) -> (B, H, T, T)
            scores = (content + position) * (1.0 / math.sqrt(self.head_dim))
            if previous_scores is not None:
                scores = scores + previous_scores.to(precise)
            logits = scores
            if padding_mask is not None:
                logits = scores.masked_fill(padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
            weights = torch.softmax(logits, dim=-1)
            weights = F.dropout(weights, self.dropout, self.training)
            attended = weights @ values                                          # (B, H, T, D)

        attended = attended.transpose(1, 2).reshape(batch, length, features).to(out_dtype)  # (B, T, F)
        return self.out(attended), scores
