"""Multi-dconv-head attention: the relative-position skew, translation equivariance, residual scores."""

from __future__ import annotations

import pytest
import torch

from vr_data.errors import VRDataError
from vr_model.network.attention import MultiDconvHeadAttention, skew


def naive_relative_logits(queries: torch.Tensor, embeddings: torch.Tensor, max_frames: int) -> torch.Tensor:
    """O(T^2 * d) reference: logit[i, j] = q_i . E[distance j - i] (row max_frames - 1 is distance 0)."""
    frames = queries.shape[-2]
    positions = torch.arange(frames)
    distance = positions[None, :] - positions[:, None]            # (T, T): key - query
    gathered = embeddings[distance + max_frames - 1]               # (T, T, D)
    return torch.einsum("bhid,ijd->bhij", queries, gathered)


@pytest.mark.parametrize("frames", [1, 2, 3, 8, 17, 64])
def test_skew_matches_naive_gather(frames):
    generator = torch.Generator().manual_seed(frames)
    max_frames, head_dim = 80, 6
    queries = torch.randn(2, 3, frames, head_dim, generator=generator)
    embeddings = torch.randn(2 * max_frames - 1, head_dim, generator=generator)
    window = embeddings[max_frames - frames: max_frames + frames - 1]  # distances -(T-1)..(T-1)
    fast = skew(queries @ window.t())
    torch.testing.assert_close(fast, naive_relative_logits(queries, embeddings, max_frames))


def test_skew_rejects_wrong_width():
    with pytest.raises(ValueError):
        skew(torch.zeros(1, 4, 8))


def test_relative_window_is_the_module_s_embedding_slice():
    torch.manual_seed(0)
    attention = MultiDconvHeadAttention(features=16, num_heads=4, max_frames=32)
    queries = torch.randn(1, 4, 10, 4)
    fast = skew(queries @ attention.relative_window(10).t())
    naive = naive_relative_logits(queries, attention.relative_embeddings.detach(), 32)
    torch.testing.assert_close(fast, naive)
    with pytest.raises(VRDataError):
        attention.relative_window(33)


def _placed(content: torch.Tensor, frames: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`content` (B, L, F) at `offset` in a sequence of `frames`; the rest is noise, masked as padding."""
    batch, length, features = content.shape
    sequence = torch.randn(batch, frames, features) * 5.0
    sequence[:, offset: offset + length] = content
    padding = torch.ones(batch, frames, dtype=torch.bool)
    padding[:, offset: offset + length] = False
    return sequence, padding


@pytest.mark.parametrize("shift", [1, 7, 20])
def test_attention_is_translation_equivariant(shift):
    """Shifting the input in time shifts the output: positions are relative, not absolute."""
    torch.manual_seed(1)
    attention = MultiDconvHeadAttention(features=16, num_heads=4, max_frames=64).eval()
    with torch.no_grad():
        attention.relative_embeddings.normal_(0.0, 1.0)  # make position matter a lot
    content = torch.randn(2, 24, 16)
    at_start, mask_start = _placed(content, 48, 2)
    shifted, mask_shifted = _placed(content, 48, 2 + shift)
    with torch.no_grad():
        out_start, _ = attention(at_start, padding_mask=mask_start)
        out_shifted, _ = attention(shifted, padding_mask=mask_shifted)
    torch.testing.assert_close(out_shifted[:, 2 + shift: 26 + shift], out_start[:, 2:26], rtol=1e-4, atol=1e-5)


def test_attention_equivariance_away_from_edges_without_mask():
    """Unmasked, a circular shift of the input shifts the output of frames away from the ends.

    Global attention sees the wrap-around everywhere, so the test makes attention local: queries
    are the (positive) inputs themselves and distances -1, 0 and +1 get a large relative logit,
    so every key further away gets a negligible weight.
    """
    torch.manual_seed(2)
    attention = MultiDconvHeadAttention(features=8, num_heads=2, max_frames=128).eval()
    centre = attention.max_frames - 1  # row of distance 0
    with torch.no_grad():
        attention.query.linear.weight.copy_(torch.eye(8) * 4.0)
        attention.query.dconv.weight.zero_()
        attention.query.dconv.weight[:, :, 1] = 1.0  # identity tap
        attention.query.dconv.bias.zero_()
        attention.relative_embeddings.zero_()
        attention.relative_embeddings[centre - 1: centre + 2] = 5.0
    sequence = torch.randn(1, 96, 8).abs() + 1.0
    rolled = torch.roll(sequence, shifts=10, dims=1)
    with torch.no_grad():
        out, _ = attention(sequence)
        out_rolled, _ = attention(rolled)
    torch.testing.assert_close(out_rolled[:, 30:80], out[:, 20:70], rtol=1e-3, atol=1e-3)


def test_scores_carry_the_previous_layer_s_scores():
    torch.manual_seed(3)
    attention = MultiDconvHeadAttention(features=16, num_heads=4, max_frames=32).eval()
    frames = torch.randn(2, 12, 16)
    previous = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        _, own = attention(frames)
        _, chained = attention(frames, previous_scores=previous)
    torch.testing.assert_close(chained, own + previous)


def test_padded_keys_get_no_weight_and_do_not_leak():
    torch.manual_seed(4)
    attention = MultiDconvHeadAttention(features=16, num_heads=4, max_frames=32).eval()
    frames = torch.randn(1, 20, 16)
    padding = torch.zeros(1, 20, dtype=torch.bool)
    padding[:, 14:] = True
    noisy = frames.clone()
    noisy[:, 14:] = torch.randn(1, 6, 16) * 100
    with torch.no_grad():
        out, _ = attention(frames, padding_mask=padding)
        out_noisy, _ = attention(noisy, padding_mask=padding)
        out_short, _ = attention(frames[:, :14])
    torch.testing.assert_close(out_noisy[:, :14], out[:, :14])
    torch.testing.assert_close(out[:, :14], out_short, rtol=1e-5, atol=1e-6)


def test_cross_attention_reads_keys_and_values_from_memory():
    torch.manual_seed(5)
    attention = MultiDconvHeadAttention(features=8, num_heads=2, max_frames=16).eval()
    frames, memory = torch.randn(1, 10, 8), torch.randn(1, 10, 8)
    with torch.no_grad():
        out_a, _ = attention(frames, memory)
        out_b, _ = attention(frames, memory * 2.0)
        out_self, _ = attention(frames)
    assert not torch.allclose(out_a, out_b)
    assert not torch.allclose(out_a, out_self)
