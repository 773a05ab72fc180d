"""Inference on whole songs: chunk a complex spectrogram, predict masks, overlap-add, apply.

`separate_spectrogram` takes a mixture spectrogram of any length (shorter than one crop too),
cuts it into crops of `crop_frames` overlapping by `overlap`, runs the model on batches of
crops, cross-fades the crop masks with a Hann window (weights normalised by their sum, so a
frame covered once gets exactly its crop's mask), and returns mask x mixture. The last crop is
zero-padded and the padding is passed as the model's `frame_mask`, so it has no influence.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from vr_data.errors import VRDataError
from vr_model.unet import FramePrimerUNet

Normaliser = Callable[[Tensor], Tensor]


def normalise_by_max(magnitude: Tensor) -> Tensor:
    """Divide by the song's largest magnitude (the vocal-remover family's model input scale)."""
    peak = magnitude.max()
    return magnitude / peak if peak > 0 else magnitude


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
    normalise: Normaliser | None = normalise_by_max,
    device: str | torch.device | None = None,
) -> Tensor | np.ndarray:
    """Instrumental spectrogram of a mixture: `(channels, bins + 1, frames)` complex -> same.

    - `mixture_spec`: complex torch tensor or numpy array, e.g. `(2, 1025, frames)`, any
      `frames >= 1`. The result has the same type (numpy in, numpy out) and complex64 dtype.
    - `crop_frames`: model input length (default and maximum: the model's `max_frames`).
    - `overlap`: fraction of a crop shared with the next one, in [0, 1).
    - `normalise`: maps the whole song's magnitude to the model's input scale; the default
      divides by the song's max magnitude, `None` feeds raw magnitudes.
    - `device`: where the model runs (default: where its parameters are); on CUDA the forward
      pass runs under bfloat16 autocast.
    The model is run in eval mode under `torch.inference_mode` and its mode is restored.
    """
    config = model.config
    crop_frames = crop_frames or config.max_frames
    if not 1 <= crop_frames <= config.max_frames:
        raise VRDataError(None, f"crop_frames must be in 1..{config.max_frames}, got {crop_frames}")
    if not 0.0 <= overlap < 1.0:
        raise VRDataError(None, f"overlap must be in [0, 1), got {overlap}")
    as_numpy = isinstance(mixture_spec, np.ndarray)
    mixture = torch.from_numpy(mixture_spec) if as_numpy else mixture_spec
    if not mixture.is_complex():
        raise VRDataError(None, "mixture_spec must be a complex spectrogram")
    if mixture.ndim != 3 or mixture.shape[0] != config.in_channels or mixture.shape[1] != config.bins + 1:
        raise VRDataError(None, f"mixture_spec must be ({config.in_channels}, {config.bins + 1}, frames), "
                                f"got {tuple(mixture.shape)}")
    mixture = mixture.to(torch.complex64)
    frames = mixture.shape[-1]
    if frames == 0:
        return mixture_spec.astype(np.complex64) if as_numpy else mixture
    device = torch.device(device) if device is not None else next(model.parameters()).device

    overlap_frames = min(int(round(crop_frames * overlap)), crop_frames - 1)
    hop = crop_frames - overlap_frames
    starts = crop_starts(frames, crop_frames, hop)
    padded_frames = starts[-1] + crop_frames
    magnitude = mixture.abs().cpu()                                          # (C, F+1, T)
    if normalise is not None:
        magnitude = normalise(magnitude)
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
                frame_index = torch.tensor(batch_starts)[:, None] + torch.arange(crop_frames)[None, :]
                padding = frame_index >= frames                                                 # (B, crop)
                masks = model(crops.to(device), padding.to(device) if padding.any() else None)
                masks = masks.float().cpu()
                for start, crop_mask in zip(batch_starts, masks):
                    mask_sum[..., start: start + crop_frames] += crop_mask * window
                    weight_sum[start: start + crop_frames] += window
    finally:
        model.train(was_training)

    mask = (mask_sum / weight_sum)[..., :frames]                              # (C, F+1, T)
    instrumental = mask.to(mixture.device) * mixture
    return instrumental.numpy() if as_numpy else instrumental
