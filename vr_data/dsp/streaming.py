"""Streaming versions of the store's STFT, its inverse and resampling: blocks in, blocks out.

`StreamingStft` gives the frames `stft` gives for the whole signal, `StreamingIstft` the samples
`istft` gives, and `StreamResampler` what `soxr.resample` gives, however the signal is cut into
blocks. Memory is about one frame (or one resampler's filter) plus the block at hand, so a song
of any length can be analysed and resynthesised block by block (`vr_model.inference.separate`).
Audio is float32 `(channels, samples)`; spectrograms complex64 `(channels, bins, frames)`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.fft
import soxr

from vr_data import errors
from vr_data.dsp.stft import StftConfig, stft, stft_frames_major, window_array
from vr_data.errors import VRDataError


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


class StreamResampler:
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
