"""The one masking path (`CropMasker`, what `vrtrain separate`, `eval` and validation run):
chunking, the end-aligned last crop, the cross-fade against a frame-by-frame reference, the
per-crop input normalisation, types and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vr_data.dsp import StftConfig
from vr_data.errors import VRDataError
from vr_data.mixer.normalisation import InputNormalisation
from vr_model import FramePrimerConfig, FramePrimerUNet
from vr_model.inference.masking import CropMasker, TorchMaskNetwork, crop_grid_frames, crossfade_window
from vr_model.inference.separate import SeparationOptions, Separator

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


def mixture(frames: int, seed: int = 0) -> np.ndarray:
    """A complex64 `(2, 65, frames)` spectrogram whose level changes a lot along time, so crops
    of one song have different maxima (a song-level and a crop-level scaling then differ)."""
    generator = torch.Generator().manual_seed(seed)
    real, imag = torch.randn(2, 2, 65, frames, generator=generator)
    level = torch.logspace(0, 2, frames)  # 1 -> 100 over the song
    return (torch.complex(real, imag) * level).numpy().astype(np.complex64)


def instrumental(model, spec: np.ndarray, crop: int = 32, overlap: float = 0.5, batch_size: int = 4,
                 normalisation: InputNormalisation = CROP_MAX, blocks: int = 1) -> np.ndarray:
    """The masker's output for `spec`, pushed in `blocks` pieces."""
    masker = CropMasker(TorchMaskNetwork(model), normalisation, crop, overlap, batch_size)
    cuts = np.linspace(0, spec.shape[-1], blocks + 1).astype(int)
    parts = [masker.push(spec[..., a:b]) for a, b in zip(cuts, cuts[1:])] + [masker.finish()]
    return np.concatenate(parts, axis=-1)


def crop_mask(model: FramePrimerUNet, spec: np.ndarray, first: int, stop: int,
              normalisation: InputNormalisation = CROP_MAX) -> np.ndarray:
    """The model's mask of one crop, computed directly: the crop alone, normalised alone."""
    piece = normalisation.apply(np.abs(spec[None, ..., first:stop]))
    with torch.inference_mode():
        return model(torch.from_numpy(piece))[0].numpy()


def reference_crossfade(model: FramePrimerUNet, spec: np.ndarray, crop: int, overlap: float) -> np.ndarray:
    """The cross-faded mask, frame by frame: each frame's mask is the window-weighted mean of the
    masks of the crops covering it (the last crop aligned to the end). Written for clarity."""
    frames = spec.shape[-1]
    overlap_frames = min(int(round(crop * overlap)), crop - 1)
    window = crossfade_window(crop, overlap_frames)
    crops = crop_grid_frames(frames, crop, overlap)
    masks = {first: crop_mask(model, spec, first, stop) for first, stop in crops}
    out = np.zeros(spec.shape, np.float32)
    for frame in range(frames):
        covering = [first for first, stop in crops if first <= frame < stop]
        weights = np.array([window[frame - first] for first in covering])
        values = np.stack([masks[first][..., frame - first] for first in covering])   # (n, C, F+1)
        out[..., frame] = (weights[:, None, None] * values).sum(0) / weights.sum()
    return out


@pytest.mark.parametrize("frames", [1, 5, 20, 32])
def test_one_crop_equals_a_direct_forward_pass(model, frames):
    """Shorter than a crop: one shorter crop, so the result is the model's own on the song."""
    spec = mixture(frames)
    result = instrumental(model, spec, crop=32)
    assert result.shape == spec.shape and result.dtype == np.complex64
    np.testing.assert_allclose(result, crop_mask(model, spec, 0, frames) * spec, rtol=1e-4, atol=1e-5)


def test_crops_without_overlap_are_each_normalised_by_their_own_max(model):
    spec = mixture(64)
    result = instrumental(model, spec, crop=32, overlap=0.0, batch_size=1)
    halves = np.concatenate([crop_mask(model, spec, start, start + 32) for start in (0, 32)], axis=-1)
    np.testing.assert_allclose(result, halves * spec, rtol=1e-5, atol=1e-5)
    # The song's max would scale the quiet first half by 1/100 of its own max: another mask.
    peak = np.abs(spec).max()
    with torch.inference_mode():
        song_scaled = model(torch.from_numpy(np.abs(spec[None, ..., :32]) / peak))[0].numpy()
    assert np.abs(song_scaled - halves[..., :32]).max() > 1e-3


@pytest.mark.parametrize("frames, crop, overlap, batch_size, blocks", [(33, 16, 0.5, 3, 1), (70, 16, 0.5, 2, 3),
                                                                       (129, 16, 0.25, 4, 5), (50, 20, 0.6, 1, 2)])
def test_overlapping_crops_match_a_frame_by_frame_crossfade_reference(model, frames, crop, overlap, batch_size,
                                                                        blocks):
    spec = mixture(frames, seed=frames)
    result = instrumental(model, spec, crop, overlap, batch_size, blocks=blocks)
    np.testing.assert_allclose(result, reference_crossfade(model, spec, crop, overlap) * spec, rtol=1e-5, atol=1e-4)


def test_the_separator_masks_a_whole_spectrogram_with_the_same_masker(model):
    """`Separator.instrumental_spectrogram` (stores' validation songs) is the masker, not a copy."""
    spec = mixture(70, seed=7)
    options = SeparationOptions(crop_frames=16, overlap=0.5, batch_size=2)
    separator = Separator(TorchMaskNetwork(model), CROP_MAX, StftConfig(n_fft=128, hop_length=32), options)
    np.testing.assert_array_equal(separator.instrumental_spectrogram(spec), instrumental(model, spec, 16, 0.5, 2))


def test_crop_max_makes_the_result_scale_free_and_none_does_not(model):
    spec = mixture(40)
    quiet = instrumental(model, spec, crop=16)
    loud = instrumental(model, spec * 100.0, crop=16)
    np.testing.assert_allclose(loud, quiet * 100.0, rtol=1e-4, atol=1e-3)
    raw = instrumental(model, spec * 100.0, crop=16, normalisation=InputNormalisation("none"))
    assert not np.allclose(raw, loud, rtol=1e-3)


def test_stats_normalisation_scales_every_bin_by_its_factor(model):
    spec = mixture(24)
    scale = np.linspace(0.5, 2.0, 65).astype(np.float32)
    stats = InputNormalisation("stats", bin_scale=tuple(scale.tolist()))
    result = instrumental(model, spec, crop=32, normalisation=stats)
    with torch.inference_mode():
        direct = model(torch.from_numpy(np.abs(spec) * scale[None, :, None])[None])[0].numpy()
    np.testing.assert_allclose(result, direct * spec, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_user_errors(model):
    network = TorchMaskNetwork(model)
    with pytest.raises(VRDataError, match="frames"):
        CropMasker(network, CROP_MAX).push(mixture(10)[:, :64])
    with pytest.raises(VRDataError, match="crop_frames"):
        CropMasker(network, CROP_MAX, crop_frames=33)
    with pytest.raises(VRDataError, match="overlap"):
        CropMasker(network, CROP_MAX, overlap=1.0)
    with pytest.raises(VRDataError, match="no frames"):
        CropMasker(network, CROP_MAX).finish()


def test_crop_plan_covers_every_frame_and_the_window_ramps():
    for frames in (1, 15, 16, 17, 100):
        for crop, overlap in ((16, 0.5), (16, 0.0), (16, 11 / 16)):
            crops = crop_grid_frames(frames, crop, overlap)
            assert crops[0][0] == 0 and crops[-1][1] == frames
            assert all(stop - first == min(crop, frames) for first, stop in crops)
            assert all(later[0] <= earlier[1] for earlier, later in zip(crops, crops[1:]))   # no gap
    window = crossfade_window(16, 4)
    assert window.min() > 0  # every frame of a crop counts, so weights never sum to zero
    assert np.array_equal(window[4:12], np.ones(8)) and np.array_equal(window, window[::-1])
    assert np.all(window[1:5] > window[:4])  # ramps up over the overlap
