"""Inference on whole songs: chunk a complex spectrogram, predict masks, overlap-add, apply.

`predict_mask` takes a mixture spectrogram of any length (shorter than one crop too), cuts it
into crops of `crop_frames` overlapping by `overlap`, scales each crop's magnitude exactly as
the model's training did (`InputNormalisation`, recorded in its checkpoint: `crop_max` divides
each crop by its own maximum, as the mixer does), runs the model on batches of crops, and
cross-fades the crop masks with a Hann window (weights normalised by their sum, so a frame
covered once gets exactly its crop's mask). `separate_spectrogram` returns mask x mixture.
The last crop is zero-padded and the padding is passed as the model's `frame_mask`, so it has
no influence (and, being zero, never sets a crop's maximum).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from vr_data.errors import VRDataError
from vr_model.normalisation import InputNormalisation
from vr_model.network.unet import FramePrimerUNet


def crop_starts(frames: int, crop_frames: int, hop: int) -> list[int]:
    """First frames of the crops covering `frames` (at least one crop; the last may overhang)."""
    count = 1 if frames <= crop_frames else math.ceil((frames - crop_frames) / hop) + 1
    return [index * hop for index in range(count)]


def crossfade_window(crop_frames: int, overlap_frames: int) -> Tensor:
    """Weights `(crop_frames,)`: Hann ramps over the overlap, 1 in the middle, never 0."""
    window = torch.ones(crop_frames)
    if overlap_frames > 0:
        ramp = torch.hann_window(2 * overlap_frames + 2, periodic=False)[1: overlap_frames + 1]  # strictly > 0
        window[:overlap_frames] = ramp
        window[-overlap_frames:] = ramp.flip(0)
    return window


def separate_spectrogram(
    model: FramePrimerUNet,
    mixture_spec: Tensor | np.ndarray,
    crop_frames: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    normalisation: InputNormalisation | None = None,
    device: str | torch.device | None = None,
) -> Tensor | np.ndarray:
    """Instrumental spectrogram of a mixture: `(channels, bins + 1, frames)` complex -> same,
    `predict_mask(...) * mixture_spec`. Numpy in, numpy out; complex64."""
    as_numpy = isinstance(mixture_spec, np.ndarray)
    mixture = _checked_mixture(model, mixture_spec)
    mask = predict_mask(model, mixture, crop_frames, overlap, batch_size, normalisation, device)
    instrumental = mask.to(mixture.device) * mixture
    return instrumental.numpy() if as_numpy else instrumental


def _checked_mixture(model: FramePrimerUNet, mixture_spec: Tensor | np.ndarray) -> Tensor:
    config = model.config
    mixture = torch.from_numpy(mixture_spec) if isinstance(mixture_spec, np.ndarray) else mixture_spec
    if not mixture.is_complex():
        raise VRDataError(None, "mixture_spec must be a complex spectrogram")
    if mixture.ndim != 3 or mixture.shape[0] != config.in_channels or mixture.shape[1] != config.bins + 1:
        raise VRDataError(None, f"mixture_spec must be ({config.in_channels}, {config.bins + 1}, frames), "
                                f"got {tuple(mixture.shape)}")
    return mixture.to(torch.complex64)


def predict_mask(
    model: FramePrimerUNet,
    mixture_spec: Tensor | np.ndarray,
    crop_frames: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    normalisation: InputNormalisation | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """The model's instrumental mask of a whole song: `(channels, bins + 1, frames)` complex in,
    float32 `(channels, bins + 1, frames)` on the CPU out.

    - `mixture_spec`: complex torch tensor or numpy array, e.g. `(2, 1025, frames)`, any
      `frames >= 1`.
    - `crop_frames`: model input length (default and maximum: the model's `max_frames`).
    - `overlap`: fraction of a crop shared with the next one, in [0, 1).
    - `normalisation`: how the model's inputs were scaled in training
      (`vr_model.network.checkpoint.checkpoint_normalisation(path)`); applied to every crop exactly as
      the mixer applied it to training crops. Default: `crop_max`, the mixer's default.
    - `device`: where the model runs (default: where its parameters are); on CUDA the forward
      pass runs under bfloat16 autocast.
    The model is run in eval mode under `torch.inference_mode` and its mode is restored.
    """
    config = model.config
    normalisation = normalisation or InputNormalisation()
    crop_frames = crop_frames or config.max_frames
    if not 1 <= crop_frames <= config.max_frames:
        raise VRDataError(None, f"crop_frames must be in 1..{config.max_frames}, got {crop_frames}")
    if not 0.0 <= overlap < 1.0:
        raise VRDataError(None, f"overlap must be in [0, 1), got {overlap}")
    mixture = _checked_mixture(model, mixture_spec)
    frames = mixture.shape[-1]
    if frames == 0:
        return torch.zeros(mixture.shape, dtype=torch.float32)
    device = torch.device(device) if device is not None else next(model.parameters()).device

    overlap_frames = min(int(round(crop_frames * overlap)), crop_frames - 1)
    hop = crop_frames - overlap_frames
    starts = crop_starts(frames, crop_frames, hop)
    padded_frames = starts[-1] + crop_frames
    magnitude = mixture.abs().cpu()                                              # (C, F+1, T)
    magnitude = torch.nn.functional.pad(magnitude, (0, padded_frames - frames))  # (C, F+1, T) -> (C, F+1, T')
    window = crossfade_window(crop_frames, overlap_frames)
    mask_sum = torch.zeros_like(magnitude)
    weight_sum = torch.zeros(padded_frames)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda",
        ):
            for first in range(0, len(starts), batch_size):
                batch_starts = starts[first: first + batch_size]
                crops = torch.stack([magnitude[..., s: s + crop_frames] for s in batch_starts])  # (B, C, F+1, crop)
                crops = normalisation.apply(crops)   # per crop, as in training; padding is zero
                frame_index = torch.tensor(batch_starts)[:, None] + torch.arange(crop_frames)[None, :]
                padding = frame_index >= frames                                                 # (B, crop)
                masks = model(crops.to(device), padding.to(device) if padding.any() else None)
                masks = masks.float().cpu()
                for start, crop_mask in zip(batch_starts, masks):
                    mask_sum[..., start: start + crop_frames] += crop_mask * window
                    weight_sum[start: start + crop_frames] += window
    finally:
        model.train(was_training)

    return (mask_sum / weight_sum)[..., :frames]                                 # (C, F+1, T)
