"""Masking a spectrogram crop by crop: the one way a song's mask is computed.

`CropMasker` takes mixture frames as they arrive and returns instrumental frames (mask x
mixture) as soon as no later crop covers them. Every crop's magnitude is scaled by the
checkpoint's `InputNormalisation` exactly as the mixer scaled each training crop, then run
through a `MaskNetwork` (`TorchMaskNetwork` for a `FramePrimerUNet`, `export.OnnxMaskNetwork` for
an exported one). Conventions (docs/separation.md):

- crops of `crop_frames` start every `crop_frames - overlap_frames` frames; the last crop is
  aligned to the song's end (full context, no padding) and a song shorter than one crop is one
  shorter crop (`crop_grid_frames` lists the first pass's crops);
- masks are cross-faded with Hann ramps (`crossfade_window`), normalised by the summed weights,
  so a frame covered by one crop gets exactly that crop's mask;
- `shifts` N: N crop grids, grid k starting k/N of a hop earlier; `tta`: at least 2 shifts
  (a grid shifted by half a hop) and a left/right-swapped pass; the passes' masks are averaged. (Half a hop, not half a crop: at an overlap of 0.5 a half-crop shift
  lands on the first grid's own crop positions.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vr_data import errors
from vr_data.errors import VRDataError
from vr_data.mixer.normalisation import InputNormalisation

# A quarter of a crop cross-fades with the next (demucs' default): every frame is computed
# 1.33 times instead of twice at 0.5, and a 1024-frame crop still fades over 6 s.
DEFAULT_OVERLAP = 0.25
CHUNK_FRAMES = 256               # frames per step of the mask/inverse-STFT work on emitted frames


class MaskNetwork(Protocol):
    """What the separator runs: normalised magnitude crops in, masks out.

    `__call__(magnitude (B, channels, bins, T) float32 torch on the CPU) -> mask, same shape,
    float32 torch on the CPU`, for `1 <= T <= max_frames`. `bins` counts the Nyquist bin.
    """

    channels: int
    bins: int
    max_frames: int

    def __call__(self, magnitude: torch.Tensor) -> torch.Tensor: ...


class TorchMaskNetwork:
    """A `FramePrimerUNet` in eval mode on `device` (bfloat16 autocast on CUDA, as in training)."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None):
        config = model.config
        if getattr(config, "head", "mask") != "mask":
            raise VRDataError(None, f"this model's head is {config.head!r}, not a mask "
                                    "(a pretraining checkpoint?); separation needs a mask model")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.channels = config.in_channels
        self.bins = config.bins + 1
        self.max_frames = config.max_frames

    def __call__(self, magnitude: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda",
        ):
            mask = self.model(magnitude.to(self.device))
        return mask.float().cpu()


def crossfade_window(crop_frames: int, overlap_frames: int) -> np.ndarray:
    """Weights float32 `(crop_frames,)`: Hann ramps over the overlap, 1 in the middle, never 0."""
    window = torch.ones(crop_frames)
    if overlap_frames > 0:
        ramp = torch.hann_window(2 * overlap_frames + 2, periodic=False)[1: overlap_frames + 1]  # strictly > 0
        window[:overlap_frames] = ramp
        window[-overlap_frames:] = ramp.flip(0)
    return window.numpy()


def crop_grid_frames(frames: int, crop_frames: int, overlap: float) -> list[tuple[int, int]]:
    """The first pass's crops `(first, stop)` over `frames` frames (for tests and docs)."""
    overlap_frames = min(int(round(crop_frames * overlap)), crop_frames - 1)
    hop = crop_frames - overlap_frames
    if frames <= crop_frames:
        return [(0, frames)]
    count = math.ceil((frames - crop_frames) / hop) + 1
    crops = [(k * hop, k * hop + crop_frames) for k in range(count)]
    crops[-1] = (frames - crop_frames, frames)
    return crops


@dataclass
class _Pass:
    """One crop grid: nominal crop k starts at `offset + k * hop` (clipped at frame 0)."""

    offset: int
    swap: bool
    index: int = 0
    finished: bool = False
    mask_sum: np.ndarray | None = None     # (C, bins, buffered frames) float32
    weight_sum: np.ndarray | None = None   # (buffered frames,) float32

    def next_start(self, hop: int) -> int:
        return self.offset + self.index * hop


class CropMasker:
    """Masks a spectrogram that arrives in blocks: push mixture frames, get instrumental frames.

    `push(mixture (channels, bins, m) complex64)` and `finish()` return instrumental frames
    `(channels, bins, m')` in order, each as soon as no later crop covers it: mask x mixture,
    the mask being the cross-faded crop masks averaged over the passes. Holds about
    `crop_frames + (batch_size - 1) * hop` frames.
    """

    def __init__(self, network: MaskNetwork, normalisation: InputNormalisation, crop_frames: int | None = None,
                 overlap: float = DEFAULT_OVERLAP, batch_size: int = 4, tta: bool = False, swap_channels: bool = True,
                 shifts: int = 1):
        crop_frames = network.max_frames if crop_frames is None else crop_frames
        if not 1 <= crop_frames <= network.max_frames:
            raise VRDataError(None, f"crop_frames must be in 1..{network.max_frames}, got {crop_frames}")
        if not 0.0 <= overlap < 1.0:
            raise VRDataError(None, f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise VRDataError(None, f"batch_size must be >= 1, got {batch_size}")
        self.network = network
        self.normalisation = normalisation
        self.crop_frames = crop_frames
        overlap_frames = min(int(round(crop_frames * overlap)), crop_frames - 1)
        self.hop = crop_frames - overlap_frames
        self.batch_size = batch_size
        self._window = crossfade_window(crop_frames, overlap_frames)
        if shifts < 1:
            raise VRDataError(None, f"shifts must be at least 1, got {shifts}")
        # Grid k starts k/shifts of a hop earlier. A hop, not a crop: at an overlap of 0.5 a
        # half-crop shift puts the crops back on the first grid's positions, adding nothing.
        shifts = max(shifts, 2) if tta else shifts
        offsets = sorted({-(k * self.hop // shifts) for k in range(shifts)}, reverse=True)
        self.passes = [_Pass(offset=offset, swap=False) for offset in offsets]
        if tta and swap_channels and network.channels == 2:
            self.passes.append(_Pass(offset=0, swap=True))
        self._spec: np.ndarray | None = None   # mixture frames [self._base, self._base + buffered)
        self._base = 0
        self.frames = 0                          # mixture frames pushed
        self.emitted = 0                         # instrumental frames returned
        self.crops_run = 0

    def push(self, mixture: np.ndarray) -> np.ndarray:
        channels, bins, _ = mixture.shape
        if channels != self.network.channels or bins != self.network.bins:
            raise VRDataError(None, f"the model takes ({self.network.channels}, {self.network.bins}, frames) "
                                    f"spectrograms, got ({channels}, {bins}, frames)")
        self._append(mixture)
        self._run(self._ready(final=False))
        return self._emit(final=False)

    def finish(self) -> np.ndarray:
        if self.frames == 0:
            raise VRDataError(None, "no frames to separate", errors.EMPTY)
        self._run(self._ready(final=True))
        return self._emit(final=True)

    def _append(self, mixture: np.ndarray) -> None:
        count = mixture.shape[-1]
        mixture = mixture.astype(np.complex64, copy=False)
        self._spec = mixture if self._spec is None else np.concatenate([self._spec, mixture], axis=-1)
        for grid in self.passes:
            if grid.mask_sum is None:
                grid.mask_sum = np.zeros(mixture.shape, np.float32)
                grid.weight_sum = np.zeros(count, np.float32)
            else:
                grid.mask_sum = np.concatenate([grid.mask_sum, np.zeros(mixture.shape, np.float32)], axis=-1)
                grid.weight_sum = np.concatenate([grid.weight_sum, np.zeros(count, np.float32)])
        self.frames += count

    def _ready(self, final: bool) -> list[tuple[_Pass, int, int, int]]:
        """Crops whose frames are all here: (pass, nominal start, first frame, stop frame)."""
        crop, hop, total = self.crop_frames, self.hop, self.frames
        if not final:
            # Wait for a full batch: a block of frames often completes a single crop.
            count = sum(max(0, (total - crop - grid.next_start(hop)) // hop + 1) for grid in self.passes)
            if count < self.batch_size:
                return []
        ready = []
        for grid in self.passes:
            while not grid.finished:
                start = grid.next_start(hop)
                first, stop = max(start, 0), start + crop
                if grid.index > 0 and start - hop + crop >= total and final:
                    grid.finished = True           # the previous crop reached the end
                    break
                if stop > total:
                    if not final:
                        break
                    first, stop = max(total - crop, 0), total   # last crop: aligned to the end
                    start = first if total >= crop else start
                    grid.finished = True
                ready.append((grid, start, first, stop))
                grid.index += 1
        return ready

    def _run(self, ready: list[tuple[_Pass, int, int, int]]) -> None:
        if not ready:
            return
        by_length: dict[int, list] = {}
        for crop in ready:
            by_length.setdefault(crop[3] - crop[2], []).append(crop)
        for length, crops in by_length.items():
            for first in range(0, len(crops), self.batch_size):
                self._run_batch(crops[first: first + self.batch_size], length)

    def _run_batch(self, crops: list[tuple[_Pass, int, int, int]], length: int) -> None:
        magnitude = np.empty((len(crops), *self._spec.shape[:2], length), np.float32)   # (B, C, bins, T)
        for row, (grid, _, first, stop) in zip(magnitude, crops):
            np.abs(self._spec[::-1 if grid.swap else 1, :, first - self._base: stop - self._base], out=row)
        self.normalisation.apply(magnitude)   # in place, per crop, as the mixer scaled training crops
        masks = self.network(torch.from_numpy(magnitude)).numpy()                                        # (B, C, bins, T)
        if masks.shape != magnitude.shape:
            raise VRDataError(None, f"the network returned {masks.shape} for input {magnitude.shape}")
        for (grid, start, first, stop), mask in zip(crops, masks):
            if grid.swap:
                mask = mask[::-1]
            # A crop clipped at frame 0 keeps the tail of the window, a short one its head.
            weights = self._window[self.crop_frames - length:] if first > start else self._window[:length]
            at, until = first - self._base, stop - self._base
            grid.mask_sum[..., at:until] += mask * weights
            grid.weight_sum[at:until] += weights
        self.crops_run += len(crops)

    def _emit(self, final: bool) -> np.ndarray:
        if final:
            limit = self.frames
        else:
            # No pending crop of any grid starts before `limit`, nor can the end-aligned last crop.
            limit = min(max(grid.next_start(self.hop), 0) for grid in self.passes)
            limit = min(limit, self.frames - self.crop_frames)
        limit = max(limit, self.emitted)
        count = limit - self.emitted
        if count == 0:
            return np.zeros((*self._spec.shape[:2], 0), np.complex64)
        instrumental = np.empty((*self._spec.shape[:2], count), np.complex64)
        for at in range(0, count, CHUNK_FRAMES):   # chunks keep the temporaries small
            until = min(at + CHUNK_FRAMES, count)
            mask = sum(grid.mask_sum[..., at:until] / grid.weight_sum[at:until] for grid in self.passes)
            mask /= len(self.passes)
            np.multiply(mask, self._spec[..., at:until], out=instrumental[..., at:until])
        self._spec = self._spec[..., count:]
        for grid in self.passes:
            grid.mask_sum = grid.mask_sum[..., count:]
            grid.weight_sum = grid.weight_sum[count:]
        self._base += count
        self.emitted = limit
        return instrumental
