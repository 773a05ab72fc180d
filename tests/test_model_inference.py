"""`separate_spectrogram`: chunking, padding, cross-fading, normalisation, types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vr_data.errors import VRDataError
from vr_model import FramePrimerConfig, FramePrimerUNet
from vr_model.inference import crop_starts, crossfade_window, normalise_by_max, separate_spectrogram


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = FramePrimerConfig(
    bins=64, channels=(2, 2, 3, 3, 4), encoder_primers=(1,) * 5, decoder_primers=(1,) * 5,
    num_heads=2, feedforward_expansion=1, max_frames=32, dropout=0.0,
)


@pytest.fixture(scope="module")
def model() -> FramePrimerUNet:
    torch.manual_seed(0)
    return FramePrimerUNet(SMALL).eval()


def mixture(frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    real, imag = torch.randn(2, 2, 65, frames, generator=generator)
    return torch.complex(real, imag)


def direct_mask(model: FramePrimerUNet, spec: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(normalise_by_max(spec.abs())[None])[0]


@pytest.mark.parametrize("frames", [1, 5, 20, 32])
def test_one_crop_equals_a_direct_forward_pass(model, frames):
    """Shorter than a crop: the zero padding is masked out, so the result is the model's own."""
    spec = mixture(frames)
    instrumental = separate_spectrogram(model, spec, crop_frames=32)
    assert instrumental.shape == spec.shape and instrumental.dtype == torch.complex64
    torch.testing.assert_close(instrumental, direct_mask(model, spec) * spec, rtol=1e-4, atol=1e-5)


def test_crops_without_overlap_are_independent(model):
    spec = mixture(64)
    instrumental = separate_spectrogram(model, spec, crop_frames=32, overlap=0.0, batch_size=1)
    scale = spec.abs().max()
    with torch.inference_mode():
        halves = [model((spec[..., s: s + 32].abs() / scale)[None])[0] for s in (0, 32)]
    torch.testing.assert_close(instrumental, torch.cat(halves, dim=-1) * spec, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frames", [33, 70, 129])
def test_overlapping_crops_any_length(model, frames):
    spec = mixture(frames, seed=frames)
    instrumental = separate_spectrogram(model, spec, crop_frames=16, overlap=0.5, batch_size=3)
    assert instrumental.shape == spec.shape
    ratio = instrumental.abs() / spec.abs()  # the mask, in [0, 1]
    assert 0.0 <= ratio.min().item() and ratio.max().item() <= 1.0 + 1e-6
    # Phase is the mixture's.
    torch.testing.assert_close(torch.angle(instrumental), torch.angle(spec), rtol=1e-4, atol=1e-4)


def test_max_normalisation_makes_the_result_scale_free(model):
    spec = mixture(40)
    quiet = separate_spectrogram(model, spec, crop_frames=16)
    loud = separate_spectrogram(model, spec * 100.0, crop_frames=16)
    torch.testing.assert_close(loud, quiet * 100.0, rtol=1e-4, atol=1e-4)
    raw = separate_spectrogram(model, spec * 100.0, crop_frames=16, normalise=None)
    assert not torch.allclose(raw, loud, rtol=1e-3)


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


def test_crop_plan_covers_every_frame():
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
