"""Streaming separation of songs: decode -> STFT -> mask network -> inverse STFT, block by block.

A song is never held as a whole spectrogram. Audio arrives in blocks (from the decoder or an
array), is resampled to the model's rate, cut into STFT frames as soon as a frame's samples are
there (`StreamingStft`), masked crop by crop with a cross-fade (`CropMasker`), turned back into
samples as soon as no later frame overlaps them (`StreamingIstft`), resampled back to the song's
own rate and written. Memory is bounded by about one crop of frames plus one decoded block,
whatever the song's length; `benchmarks/bench_separate.py` measures it.

Every stage equals its whole-song counterpart: `StreamingStft` gives the frames `stft` gives,
`StreamingIstft` the samples `istft` gives, and the crop grid is a pure function of the frame
count. So a block size changes nothing but memory.

Conventions (docs/separation.md):
- The model sees the checkpoint's `InputNormalisation`, applied to each crop exactly as the
  trainer applied it to each training crop.
- Crops of `crop_frames` start every `crop_frames - overlap_frames` frames; the last crop is
  aligned to the song's end (full context, no padding) and a song shorter than one crop is one
  shorter crop. Masks are cross-faded with Hann ramps, normalised by the summed weights.
- `tta`: a second crop grid shifted by half a hop, and a left/right-swapped pass; the passes'
  masks are averaged. (Half a hop, not half a crop: at an overlap of 0.5 a half-crop shift
  lands on the first grid's own crop positions.)
- Mono songs are duplicated to the stereo model input; the two instrumental channels are
  averaged back to mono.
- The vocals are the song minus the instrumental, in the time domain at the song's own rate,
  so the two outputs sum to the decoded song exactly (before the output file's quantisation).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.fft
import soundfile as sf
import soxr
import torch

from vr_data import errors
from vr_data.audio import AUDIO_EXTENSIONS, DEFAULT_SAMPLE_RATE, load_audio
from vr_data.dsp import StftConfig, stft
from vr_data.dsp.stft import stft_frames_major, window_array
from vr_data.errors import VRDataError
from vr_model.inference.song import crossfade_window
from vr_model.normalisation import InputNormalisation

BLOCK_SAMPLES = 1 << 18          # decoded samples per block (about 6 s at 44.1 kHz)
# A quarter of a crop cross-fades with the next (demucs' default): every frame is computed
# 1.33 times instead of twice at 0.5, and a 1024-frame crop still fades over 6 s.
DEFAULT_OVERLAP = 0.25
_CHUNK_FRAMES = 256              # frames per step of the mask/inverse-STFT work on emitted frames
FORMATS = {"wav": "WAV", "flac": "FLAC"}
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
ProgressCallback = Callable[[int], None]  # called with the song's samples written so far


# ----------------------------------------------------------------------------- mask networks


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


# ----------------------------------------------------------------------------- streaming STFT


class StreamingStft:
    """`stft` of a signal that arrives in blocks: push `(channels, n)` float32, get frames.

    Frames come out as complex64 `(channels, bins, m)`, in order, as soon as their samples are
    there; `finish()` appends the end padding and returns the rest. The concatenated output
    equals `stft(whole_signal, config)` (the same per-frame window and FFT). Memory: less than
    one frame plus the last block.
    """

    def __init__(self, config: StftConfig):
        self.config = config
        # Frames are cut from an explicitly padded stream with an uncentred, unpadded transform.
        self._framer = replace(config, center=False, pad_end=False)
        self._pad = config.n_fft // 2 if config.center else 0
        self._pending: np.ndarray | None = None   # padded-stream samples from frame self.frames on
        self._head: list[np.ndarray] = []         # reflect mode: samples held until the left pad is known
        self._tail: np.ndarray | None = None      # reflect mode: the last pad + 1 samples seen
        self.samples = 0                          # signal samples pushed
        self.frames = 0                           # frames returned

    def push(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio blocks must be (channels, samples), got {audio.shape}")
        self.samples += audio.shape[1]
        if self.config.center and self.config.pad_mode == "reflect":
            self._tail = _last(self._tail, audio, self._pad + 1)
            if self._pending is None:
                self._head.append(audio)
                held = sum(block.shape[1] for block in self._head)
                if held <= self._pad:
                    return self._empty(audio.shape[0])
                audio = np.concatenate(self._head, axis=1)
                self._head = []
                left = np.pad(audio[:, : self._pad + 1], ((0, 0), (self._pad, 0)), mode="reflect")[:, : self._pad]
                self._pending = left
        elif self._pending is None:
            self._pending = np.zeros((audio.shape[0], self._pad), np.float32)
        self._pending = np.concatenate([self._pending, audio], axis=1)
        return self._cut(final_frames=None)

    def finish(self) -> np.ndarray:
        """The remaining frames, after the `pad_end` zeros and the right centring pad."""
        config = self.config
        total_frames = config.frames_for(self.samples)
        if total_frames == 0:
            raise VRDataError(None, f"{self.samples} samples are fewer than n_fft={config.n_fft} for an uncentred STFT")
        if self._pending is None:  # reflect mode, a signal no longer than the pad: do it whole
            if not self._head:
                raise VRDataError(None, "no audio samples", errors.EMPTY)
            whole = np.concatenate(self._head, axis=1)
            self._head = []
            self.frames = total_frames
            return np.ascontiguousarray(stft(whole, config))
        channels = self._pending.shape[0]
        end_zeros = np.zeros((channels, config.padded_samples(self.samples) - self.samples), np.float32)
        if config.center and config.pad_mode == "reflect":
            tail = np.concatenate([self._tail, end_zeros], axis=1)[:, -(self._pad + 1):]
            right = np.pad(tail, ((0, 0), (0, self._pad)), mode="reflect")[:, -self._pad:]
        else:
            right = np.zeros((channels, self._pad), np.float32)
        self._pending = np.concatenate([self._pending, end_zeros, right], axis=1)
        return self._cut(final_frames=total_frames)

    def _cut(self, final_frames: int | None) -> np.ndarray:
        n_fft, hop = self.config.n_fft, self.config.hop_length
        available = self._pending.shape[1]
        count = 0 if available < n_fft else 1 + (available - n_fft) // hop
        if final_frames is not None:
            count = min(count, final_frames - self.frames)
        if count <= 0:
            return self._empty(self._pending.shape[0])
        frames = stft_frames_major(self._pending[:, : (count - 1) * hop + n_fft], self._framer)
        self._pending = self._pending[:, count * hop:]
        self.frames += count
        return np.ascontiguousarray(frames.transpose(0, 2, 1))   # (C, m, bins) -> (C, bins, m)

    def _empty(self, channels: int) -> np.ndarray:
        return np.zeros((channels, self.config.bins, 0), np.complex64)


def _last(kept: np.ndarray | None, audio: np.ndarray, count: int) -> np.ndarray:
    joined = audio if kept is None else np.concatenate([kept, audio], axis=1)
    return joined[:, -count:]


class StreamingIstft:
    """`istft` of frames that arrive in blocks: push complex `(channels, bins, m)`, get samples.

    A sample is returned once no later frame overlaps it, divided by the overlapped squared
    window as `istft` does. `finish(length)` returns the rest, trimmed or zero-padded so that
    `length` samples came out in all (the `length` argument of `istft`).
    """

    def __init__(self, config: StftConfig):
        self.config = config
        self._window = window_array(config).astype(np.float32)
        self._squared = self._window ** 2
        self._signal: np.ndarray | None = None    # overlap-added samples from padded position self._start
        self._weight = np.zeros(0, np.float32)    # overlapped squared window over the same samples
        self._start = 0                           # padded-stream position of self._signal[:, 0]
        self._skip = config.n_fft // 2 if config.center else 0
        self.frames = 0
        self.samples = 0                          # samples returned

    def push(self, spec: np.ndarray) -> np.ndarray:
        channels, bins, count = spec.shape
        if bins != self.config.bins:
            raise ValueError(f"frames must have {self.config.bins} bins, got {bins}")
        n_fft, hop = self.config.n_fft, self.config.hop_length
        if count:
            framed = scipy.fft.irfft(np.ascontiguousarray(spec.transpose(0, 2, 1)), n=n_fft, axis=-1)
            framed = framed.astype(np.float32, copy=False) * self._window           # (C, m, n_fft)
            first = self.frames * hop - self._start
            needed = first + (count - 1) * hop + n_fft
            if self._signal is None:
                self._signal = np.zeros((channels, 0), np.float32)
            if needed > self._signal.shape[1]:
                grow = needed - self._signal.shape[1]
                self._signal = np.pad(self._signal, ((0, 0), (0, grow)))
                self._weight = np.pad(self._weight, (0, grow))
            for index in range(count):   # frames are hop apart; a block holds a few hundred at most
                at = first + index * hop
                self._signal[:, at: at + n_fft] += framed[:, index]
                self._weight[at: at + n_fft] += self._squared
            self.frames += count
        if self._signal is None:
            return np.zeros((channels, 0), np.float32)
        return self._release(self.frames * hop - self._start)   # later frames start at frames * hop

    def finish(self, length: int) -> np.ndarray:
        if self._signal is None:
            raise ValueError("finish() before any frame")
        out = self._release(self._signal.shape[1])
        wanted = length - (self.samples - out.shape[1])
        if wanted < out.shape[1]:
            out = out[:, :max(wanted, 0)]
        elif wanted > out.shape[1]:
            out = np.pad(out, ((0, 0), (0, wanted - out.shape[1])))
        self.samples = length
        return np.ascontiguousarray(out)

    def _release(self, final: int) -> np.ndarray:
        """Samples `[0, final)` of the buffer are complete: normalise, drop the centring pad, return."""
        final = min(final, self._signal.shape[1])
        weight = self._weight[:final]
        done = self._signal[:, :final] / np.where(weight > np.finfo(np.float32).tiny, weight, 1.0)
        skip = max(self._skip - self._start, 0)
        out = done[:, min(skip, final):]
        self._signal = self._signal[:, final:]
        self._weight = self._weight[final:]
        self._start += final
        self.samples += out.shape[1]
        return out


# ----------------------------------------------------------------------------- cropping and masks


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
                 overlap: float = DEFAULT_OVERLAP, batch_size: int = 4, tta: bool = False, swap_channels: bool = True):
        crop_frames = crop_frames or network.max_frames
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
        self._window = crossfade_window(crop_frames, overlap_frames).numpy()
        self.passes = [_Pass(offset=0, swap=False)]
        if tta:
            # Half a hop, not half a crop: at the default overlap of 0.5 a half-crop shift puts the
            # crops back on the first grid's positions, and the pass would add nothing.
            shift = self.hop // 2
            if shift:
                self.passes.append(_Pass(offset=-shift, swap=False))
            if swap_channels and network.channels == 2:
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
        scaled = self.normalisation.apply(torch.from_numpy(magnitude))
        masks = self.network(scaled).numpy()                                         # (B, C, bins, T)
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
        for at in range(0, count, _CHUNK_FRAMES):   # chunks keep the temporaries small
            until = min(at + _CHUNK_FRAMES, count)
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


# ----------------------------------------------------------------------------- the separator


@dataclass(frozen=True)
class SeparationOptions:
    """How a song is cut for the network. `crop_frames`: frames per crop (default: the model's
    `max_frames`); `overlap`: fraction of a crop shared with the next, [0, 1); `batch_size`: crops
    per network call; `tta`: add the shifted and the left/right-swapped passes."""

    crop_frames: int | None = None
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = 4
    tta: bool = False


@dataclass
class Separator:
    """A mask network with the normalisation and the STFT it was trained with."""

    network: MaskNetwork
    normalisation: InputNormalisation
    stft: StftConfig
    options: SeparationOptions = SeparationOptions()

    def __post_init__(self) -> None:
        if self.stft.bins != self.network.bins:
            raise VRDataError(None, f"the STFT gives {self.stft.bins} bins, the model takes {self.network.bins}")

    def masker(self, swap_channels: bool = True) -> CropMasker:
        options = self.options
        return CropMasker(self.network, self.normalisation, options.crop_frames, options.overlap,
                          options.batch_size, options.tta, swap_channels)

    def instrumental_spectrogram(self, mixture_spec: np.ndarray) -> np.ndarray:
        """Complex `(channels, bins, frames)` mixture -> instrumental, the whole song at once
        (for spectrograms already in memory, such as a store's validation songs)."""
        masker = self.masker()
        parts = [masker.push(mixture_spec), masker.finish()]
        return np.concatenate(parts, axis=-1)

    def stream(self, blocks: Iterable[np.ndarray], sample_rate: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Separate a song that arrives as float32 blocks `(channels, n)` at `sample_rate` Hz.

        Yields `(mixture, instrumental)` block pairs at the song's rate and channel count (1 or
        2), in order; together they cover the song exactly, sample for sample.
        """
        model_rate, model_channels = self.stft.sample_rate, self.network.channels
        song = _SongBuffer()
        to_model = _Resampler(sample_rate, model_rate)
        to_song = _Resampler(model_rate, sample_rate)
        analysis, synthesis = StreamingStft(self.stft), StreamingIstft(self.stft)
        masker: CropMasker | None = None
        channels = None
        model_samples = 0

        def back_to_song(instrumental: np.ndarray, last: bool = False) -> np.ndarray:
            if channels == 1 and model_channels != 1:
                instrumental = instrumental.mean(axis=0, keepdims=True)   # the mono song's instrumental
            return to_song(instrumental, last)

        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if channels is None:
                channels = block.shape[0]
                if channels not in (1, model_channels):
                    raise VRDataError(None, f"{channels} channels; the model takes mono or {model_channels}",
                                      errors.CHANNELS)
                # Swapping the channels of a duplicated mono song would repeat the first pass.
                masker = self.masker(swap_channels=channels != 1)
            song.append(block)
            resampled = to_model(block)
            model_samples += resampled.shape[1]
            frames = analysis.push(_to_channels(resampled, model_channels))
            instrumental = back_to_song(_synthesise(synthesis, masker.push(frames)))
            if instrumental.shape[1]:
                yield song.take(instrumental.shape[1]), instrumental
        if channels is None or song.total == 0:
            raise VRDataError(None, "no audio samples", errors.EMPTY)
        resampled = to_model.finish(channels)
        model_samples += resampled.shape[1]
        frames = analysis.push(_to_channels(resampled, model_channels)) if resampled.shape[1] else None
        tail = [masker.push(frames)] if frames is not None else []
        tail += [masker.push(analysis.finish()), masker.finish()]
        model_tail = [_synthesise(synthesis, spec) for spec in tail] + [synthesis.finish(model_samples)]
        instrumental = back_to_song(np.concatenate(model_tail, axis=1), last=True)
        # The resampler's output count can differ from the song's by a sample: cut or pad to it.
        remaining = song.total - song.taken
        if instrumental.shape[1] != remaining:
            instrumental = instrumental[:, :remaining]
            instrumental = np.pad(instrumental, ((0, 0), (0, remaining - instrumental.shape[1])))
        if remaining:
            yield song.take(remaining), instrumental

    def separate_audio(self, mixture: np.ndarray, sample_rate: int,
                       block_samples: int = BLOCK_SAMPLES) -> np.ndarray:
        """Instrumental of float `(channels, samples)` audio at `sample_rate`: same shape and rate."""
        mixture = np.atleast_2d(np.asarray(mixture, dtype=np.float32))
        blocks = (mixture[:, at: at + block_samples] for at in range(0, mixture.shape[1], block_samples))
        parts = [instrumental for _, instrumental in self.stream(blocks, sample_rate)]
        return np.concatenate(parts, axis=1)

    def separate_file(self, path: str | Path, out_dir: str | Path, *, format: str = "wav",
                      subtype: str = "PCM_24", name: str | None = None,
                      on_progress: ProgressCallback | None = None,
                      block_samples: int = BLOCK_SAMPLES) -> "SeparatedSong":
        """Write `<name>_instrumental.<format>` and `<name>_vocals.<format>` into `out_dir`.

        Both files have the song's own sample rate, channel count and exact length. They are
        written block by block under temporary names and renamed when complete, so a failure
        leaves neither. Raises VRDataError for a file that cannot be decoded.
        """
        path = Path(path)
        check_output_format(format, subtype)
        name = name or path.stem
        out_dir = Path(out_dir)
        targets = {stem: out_dir / f"{name}_{stem}.{format}" for stem in ("instrumental", "vocals")}
        decoded = open_audio_blocks(path, block_samples)
        writers: dict[str, _AtomicSoundWriter] = {}
        written = 0
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stem, target in targets.items():
                writers[stem] = _AtomicSoundWriter(target, decoded.sample_rate, decoded.channels, format, subtype)
            for mixture, instrumental in self.stream(decoded.blocks, decoded.sample_rate):
                writers["instrumental"].write(instrumental)
                writers["vocals"].write(mixture - instrumental)
                written += mixture.shape[1]
                if on_progress is not None:
                    on_progress(written)
            for writer in writers.values():
                writer.commit()
        except VRDataError as error:
            for writer in writers.values():
                writer.abort()
            raise VRDataError(error.path or path, error.reason, error.code) from None
        except (OSError, sf.LibsndfileError) as error:   # decoding errors are VRDataError already
            for writer in writers.values():
                writer.abort()
            raise VRDataError(out_dir, f"cannot write the outputs of {path.name} ({_one_line(error, out_dir)})") from None
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return SeparatedSong(path, targets["instrumental"], targets["vocals"], decoded.sample_rate,
                             decoded.channels, written)


@dataclass(frozen=True)
class SeparatedSong:
    source: Path
    instrumental: Path
    vocals: Path
    sample_rate: int
    channels: int
    samples: int

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def _synthesise(synthesis: StreamingIstft, spec: np.ndarray) -> np.ndarray:
    """Inverse STFT of many frames a chunk at a time: the per-frame buffers stay small."""
    parts = [synthesis.push(spec[..., at: at + _CHUNK_FRAMES]) for at in range(0, spec.shape[-1], _CHUNK_FRAMES)]
    if not parts:
        return synthesis.push(spec)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono duplicated to the model's channels (a centred stereo image)."""
    if audio.shape[0] == channels:
        return audio
    return np.repeat(audio, channels, axis=0)


class _SongBuffer:
    """The song's own samples, kept until their instrumental comes out (about one crop later)."""

    def __init__(self) -> None:
        self._blocks: deque[np.ndarray] = deque()
        self.total = 0
        self.taken = 0

    def append(self, block: np.ndarray) -> None:
        if block.shape[1]:
            self._blocks.append(block)
            self.total += block.shape[1]

    def take(self, count: int) -> np.ndarray:
        parts = []
        while count > 0:
            block = self._blocks[0]
            if block.shape[1] <= count:
                parts.append(self._blocks.popleft())
                count -= block.shape[1]
            else:
                parts.append(block[:, :count])
                self._blocks[0] = block[:, count:]
                count = 0
        out = np.concatenate(parts, axis=1) if len(parts) != 1 else parts[0]
        self.taken += out.shape[1]
        return out


class _Resampler:
    """soxr's streaming resampler (the same output as `soxr.resample` on the whole signal)."""

    def __init__(self, source_rate: int, target_rate: int):
        self.source_rate, self.target_rate = source_rate, target_rate
        self._stream = None

    def __call__(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        if self.source_rate == self.target_rate or (audio.shape[1] == 0 and not last):
            return audio
        if self._stream is None:
            self._stream = soxr.ResampleStream(self.source_rate, self.target_rate, audio.shape[0],
                                               dtype="float32", quality="HQ")
        out = self._stream.resample_chunk(np.ascontiguousarray(audio.T), last=last)
        return np.ascontiguousarray(out.T)

    def finish(self, channels: int) -> np.ndarray:
        if self.source_rate == self.target_rate or self._stream is None:
            return np.zeros((channels, 0), np.float32)
        return self(np.zeros((channels, 0), np.float32), last=True)


# ----------------------------------------------------------------------------- decoding and writing


@dataclass
class DecodedBlocks:
    """A song opened for block-wise decoding: its rate, channels, header length and blocks."""

    sample_rate: int
    channels: int
    samples: int
    blocks: Iterator[np.ndarray]

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def open_audio_blocks(path: str | Path, block_samples: int = BLOCK_SAMPLES) -> DecodedBlocks:
    """Open `path` for decoding in float32 `(channels, n)` blocks at its own rate.

    soundfile reads wav, flac, ogg, mp3 and aiff block by block; other containers (m4a, mp4,
    aac through ffmpeg) are decoded whole by `load_audio` (stereo at 44.1 kHz). Raises
    VRDataError for a missing, undecodable, empty or more-than-stereo file; a non-finite sample
    raises when its block is read.
    """
    path = Path(path)
    if not path.is_file():
        raise VRDataError(path, "file not found", errors.MISSING)
    try:
        handle = sf.SoundFile(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        if path.suffix.lower() not in AUDIO_EXTENSIONS or path.suffix.lower() in (".wav", ".flac", ".ogg"):
            raise VRDataError(path, f"cannot decode audio ({_one_line(error, path)})", errors.UNREADABLE) from None
        audio = load_audio(path, silence_dbfs=None)     # containers soundfile does not read
        blocks = (audio[:, at: at + block_samples] for at in range(0, audio.shape[1], block_samples))
        return DecodedBlocks(DEFAULT_SAMPLE_RATE, 2, audio.shape[1], blocks)
    channels, samples = int(handle.channels), int(handle.frames)
    if channels > 2:
        handle.close()
        raise VRDataError(path, f"{channels} channels; only mono and stereo songs are separated", errors.CHANNELS)
    if samples == 0:
        handle.close()
        raise VRDataError(path, "no audio samples", errors.EMPTY)
    return DecodedBlocks(int(handle.samplerate), channels, samples, _read_blocks(handle, path, block_samples))


def _read_blocks(handle: sf.SoundFile, path: Path, block_samples: int) -> Iterator[np.ndarray]:
    with handle:
        while True:
            try:
                block = handle.read(block_samples, dtype="float32", always_2d=True)   # (n, channels)
            except Exception as error:
                raise VRDataError(path, f"cannot decode audio ({_one_line(error, path)})", errors.UNREADABLE) from None
            if block.shape[0] == 0:
                return
            if not np.isfinite(block).all():
                raise VRDataError(path, "non-finite samples (NaN or inf)", errors.NON_FINITE)
            yield np.ascontiguousarray(block.T)


def check_output_format(format: str, subtype: str) -> None:
    """Refuse a format/subtype pair before any work: flac has no float samples."""
    if format not in FORMATS:
        raise VRDataError(None, f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if subtype not in SUBTYPES:
        raise VRDataError(None, f"subtype must be one of {', '.join(SUBTYPES)}, not {subtype!r}")
    if not sf.check_format(FORMATS[format], subtype):
        raise VRDataError(None, f"{format} files cannot hold {subtype} samples")


class _AtomicSoundWriter:
    """A sound file written block by block under a temporary name, renamed by `commit`."""

    def __init__(self, path: Path, sample_rate: int, channels: int, format: str, subtype: str):
        if path.exists() and not path.is_file():
            raise VRDataError(path, "exists and is not a regular file; not replacing it")
        self.path = path
        self.temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.clip = subtype != "FLOAT"   # integer samples wrap around instead of saturating
        self._handle = sf.SoundFile(str(self.temporary), "w", samplerate=sample_rate, channels=channels,
                                    subtype=subtype, format=FORMATS[format])

    def write(self, audio: np.ndarray) -> None:
        if self.clip:
            audio = np.clip(audio, -1.0, 1.0)
        self._handle.write(np.ascontiguousarray(audio.T))

    def commit(self) -> None:
        self._handle.close()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.temporary.unlink(missing_ok=True)


def _one_line(error: Exception, path: Path) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.replace(f"Error opening '{path}': ", "").replace(str(path), "<file>")[:160]


# ----------------------------------------------------------------------------- loading


def load_checkpoint_model(path: str | Path, device: str = "cpu", weights: str | None = None):
    """`(model, normalisation, stft_config)` of a checkpoint, the model in eval mode on `device`.

    `path`: a checkpoint directory, or a run directory (its best checkpoint). `weights`: "ema"
    (the default: the moving average where the checkpoint keeps one) or "raw". The STFT is the
    store's, recorded by the trainer in `extra.stft` (the default `StftConfig` otherwise).
    """
    from vr_model.network.checkpoint import checkpoint_normalisation, load_model, read_checkpoint_json, resolve_checkpoint

    device = resolve_device(device)
    directory = resolve_checkpoint(path)
    extra = read_checkpoint_json(directory).get("extra", {})
    stft_config = StftConfig.from_dict(extra["stft"]) if "stft" in extra else StftConfig()
    model = load_model(directory, device, weights=weights or "ema")
    return model, checkpoint_normalisation(directory), stft_config


def separator_from_checkpoint(path: str | Path, device: str = "cpu", weights: str | None = None,
                              options: SeparationOptions = SeparationOptions()) -> Separator:
    """A `Separator` for a checkpoint: its weights, the normalisation and STFT it was trained with."""
    model, normalisation, stft_config = load_checkpoint_model(path, device, weights)
    return Separator(TorchMaskNetwork(model, resolve_device(device)), normalisation, stft_config, options)


def resolve_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise VRDataError(None, f"device must be cpu or cuda, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VRDataError(None, "--device cuda: no CUDA device is available to torch here")
    return device


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
