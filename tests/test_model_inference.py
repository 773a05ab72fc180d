"""`predict_mask` / `separate_spectrogram`: chunking, padding, the cross-fade against a
frame-by-frame reference, the per-crop input normalisation, types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vr_data.errors import VRDataError
from vr_model import FramePrimerConfig, FramePrimerUNet
from vr_model.inference.song import crop_starts, crossfade_window, predict_mask, separate_spectrogram
from vr_model.normalisation import InputNormalisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = FramePrimerConfig(
    bins=64, channels=(2, 2, 3, 3, 4), encoder_primers=(1,) * 5, decoder_primers=(1,) * 5,
    num_heads=2, feedforward_expansion=1, max_frames=32, dropout=0.0,
)
CROP_MAX = InputNormalisation("crop_max")


@pytest.fixture(scope="module")
def model() -> FramePrimerUNet:
    torch.manual_seed(0)
    return FramePrimerUNet(SMALL).eval()


def mixture(frames: int, seed: int = 0) -> torch.Tensor:
    """A complex `(2, 65, frames)` spectrogram whose level changes a lot along time, so crops
    of one song have different maxima (a song-level and a crop-level scaling then differ)."""
    generator = torch.Generator().manual_seed(seed)
    real, imag = torch.randn(2, 2, 65, frames, generator=generator)
    level = torch.logspace(0, 2, frames)  # 1 -> 100 over the song
    return torch.complex(real, imag) * level


def crop_mask(model: FramePrimerUNet, spec: torch.Tensor, start: int, crop: int,
              normalisation: InputNormalisation = CROP_MAX) -> torch.Tensor:
    """The model's mask of one crop, computed directly: zero-pad to `crop` frames, normalise the
    crop alone, mask the padding. `(C, F+1, crop)`."""
    piece = spec[..., start: start + crop].abs()
    real = piece.shape[-1]
    piece = torch.nn.functional.pad(piece, (0, crop - real))[None]
    padding = (torch.arange(crop) >= real)[None]
    with torch.inference_mode():
        return model(normalisation.apply(piece), padding if padding.any() else None)[0]


def reference_crossfade(model: FramePrimerUNet, spec: torch.Tensor, crop: int, overlap: float) -> torch.Tensor:
    """The cross-faded mask, frame by frame: each frame's mask is the window-weighted mean of the
    masks of the crops covering it. Written for clarity, not speed."""
    frames = spec.shape[-1]
    overlap_frames = min(int(round(crop * overlap)), crop - 1)
    hop = crop - overlap_frames
    window = crossfade_window(crop, overlap_frames)
    starts, start = [], 0
    while True:
        starts.append(start)
        if start + crop >= frames:
            break
        start += hop
    masks = {s: crop_mask(model, spec, s, crop) for s in starts}
    out = torch.zeros(spec.shape, dtype=torch.float32)
    for frame in range(frames):
        covering = [s for s in starts if s <= frame < s + crop]
        weights = torch.stack([window[frame - s] for s in covering])
        values = torch.stack([masks[s][..., frame - s] for s in covering])      # (n, C, F+1)
        out[..., frame] = (weights[:, None, None] * values).sum(0) / weights.sum()
    return out


@pytest.mark.parametrize("frames", [1, 5, 20, 32])
def test_one_crop_equals_a_direct_forward_pass(model, frames):
    """Shorter than a crop: the zero padding is masked out, so the result is the model's own."""
    spec = mixture(frames)
    instrumental = separate_spectrogram(model, spec, crop_frames=32)
    assert instrumental.shape == spec.shape and instrumental.dtype == torch.complex64
    torch.testing.assert_close(instrumental, crop_mask(model, spec, 0, 32)[..., :frames] * spec, rtol=1e-4, atol=1e-5)


def test_crops_without_overlap_are_each_normalised_by_their_own_max(model):
    spec = mixture(64)
    mask = predict_mask(model, spec, crop_frames=32, overlap=0.0, batch_size=1)
    halves = [crop_mask(model, spec, start, 32) for start in (0, 32)]
    torch.testing.assert_close(mask, torch.cat(halves, dim=-1), rtol=1e-5, atol=1e-6)
    # The song's max would scale the quiet first half by 1/100 of its own max: another mask.
    peak = spec.abs().max()
    with torch.inference_mode():
        song_scaled = model((spec[..., :32].abs() / peak)[None])[0]
    assert (song_scaled - halves[0]).abs().max() > 1e-3


@pytest.mark.parametrize("frames, crop, overlap, batch_size", [(33, 16, 0.5, 3), (70, 16, 0.5, 2),
                                                               (129, 16, 0.25, 4), (50, 20, 0.6, 1)])
def test_overlapping_crops_match_a_frame_by_frame_crossfade_reference(model, frames, crop, overlap, batch_size):
    spec = mixture(frames, seed=frames)
    mask = predict_mask(model, spec, crop_frames=crop, overlap=overlap, batch_size=batch_size)
    torch.testing.assert_close(mask, reference_crossfade(model, spec, crop, overlap), rtol=1e-5, atol=1e-6)
    instrumental = separate_spectrogram(model, spec, crop_frames=crop, overlap=overlap, batch_size=batch_size)
    torch.testing.assert_close(instrumental, mask * spec, rtol=1e-6, atol=1e-6)


def test_crop_max_makes_the_result_scale_free_and_none_does_not(model):
    spec = mixture(40)
    quiet = separate_spectrogram(model, spec, crop_frames=16)
    loud = separate_spectrogram(model, spec * 100.0, crop_frames=16)
    torch.testing.assert_close(loud, quiet * 100.0, rtol=1e-4, atol=1e-4)
    raw = separate_spectrogram(model, spec * 100.0, crop_frames=16, normalisation=InputNormalisation("none"))
    assert not torch.allclose(raw, loud, rtol=1e-3)


def test_stats_normalisation_scales_every_bin_by_its_factor(model):
    spec = mixture(24)
    scale = torch.linspace(0.5, 2.0, 65)
    stats = InputNormalisation("stats", bin_scale=tuple(scale.tolist()))
    mask = predict_mask(model, spec, crop_frames=32, normalisation=stats)
    with torch.inference_mode():
        direct = model((spec.abs() * scale[None, :, None])[None])[0]
    torch.testing.assert_close(mask, direct, rtol=1e-5, atol=1e-6)


def test_numpy_in_numpy_out_and_mode_restored(model):
    spec = mixture(20).numpy()
    model.train()
    try:
        instrumental = separate_spectrogram(model, spec, crop_frames=16)
        assert model.training
    finally:
        model.eval()
    assert isinstance(instrumental, np.ndarray) and instrumental.dtype == np.complex64
    assert instrumental.shape == spec.shape


def test_bad_inputs_are_user_errors(model):
    with pytest.raises(VRDataError, match="complex"):
        separate_spectrogram(model, torch.rand(2, 65, 10))
    with pytest.raises(VRDataError, match="frames"):
        separate_spectrogram(model, mixture(10)[:, :64])
    with pytest.raises(VRDataError, match="crop_frames"):
        separate_spectrogram(model, mixture(10), crop_frames=33)
    with pytest.raises(VRDataError, match="overlap"):
        separate_spectrogram(model, mixture(10), overlap=1.0)


def test_crop_plan_covers_every_frame_and_the_window_ramps():
    for frames in (1, 15, 16, 17, 100):
        for crop, hop in ((16, 8), (16, 16), (16, 5)):
            starts = crop_starts(frames, crop, hop)
            assert starts[0] == 0 and starts[-1] + crop >= frames
            assert all(later - earlier == hop for earlier, later in zip(starts, starts[1:]))
            assert len(starts) == 1 or starts[-1] < frames
    window = crossfade_window(16, 4)
    assert window.min() > 0  # every frame of a crop counts, so weights never sum to zero
    assert torch.equal(window[4:12], torch.ones(8)) and torch.equal(window, window.flip(0))
    assert torch.all(window[1:5] > window[:4])  # ramps up over the overlap
