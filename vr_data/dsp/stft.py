"""Short-time Fourier transform of stereo audio, forward and inverse, matching librosa.

Stores and the mixer keep complex spectrograms, so the transform must invert cleanly and agree
with what the vocal-remover family computes with `librosa.stft`/`librosa.istft`: periodic
window, frames centred on `t * hop_length` with zero padding (librosa 0.11's default
`pad_mode="constant"`), inverse normalised by the overlapped squared window. The numpy
versions here compute the same thing without librosa's per-call overhead: one strided frame
view, one batched real FFT, and an overlap-add done hop-block by hop-block.

Shapes: audio float32 `(channels, samples)`, spectrograms complex64 `(channels, bins, frames)`
with `bins = n_fft // 2 + 1`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

# scipy.fft and scipy.signal are imported where they are used: `import scipy.signal` alone takes
# about 2.3 s, and every spawned DataLoader worker of the mixer imports this module (for
# StftConfig) without computing a transform (measured: docs/performance.md, worker start-up).

from vr_data.errors import VRDataError

_PAD_MODES = ("constant", "reflect")


@dataclass(frozen=True)
class StftConfig:
    """The transform a store was built with; `store.json` keeps `to_dict()`.

    `sample_rate` in Hz, `n_fft` and `hop_length` in samples. `window` is any name
    `scipy.signal.get_window` knows (as librosa), taken periodic and `n_fft` long. `center`
    pads `n_fft // 2` samples each side (`pad_mode`) so frame `t` is centred on sample
    `t * hop_length`.

    `pad_end` first appends zeros up to a whole number of hops (as `librosa.stft` of the
    zero-padded signal). Why: with librosa's framing the samples after the last frame centre
    are covered by that one frame's falling half-window only, so the inverse divides them by
    squared window values down to ~1e-11 and any change to the spectrogram (codec rounding, a
    model's output) explodes there; measured here, a 40 dB codec gave 35 dB on a track that
    ends loud. With `pad_end` every sample is covered by two frames (centred STFT) and none is
    dropped (uncentred). Set it False for frame counts identical to `librosa.stft`.
    """

    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 1024
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    pad_end: bool = True

    def __post_init__(self) -> None:
        if self.n_fft < 2 or self.hop_length < 1 or self.hop_length > self.n_fft:
            raise VRDataError(None, f"invalid STFT sizes n_fft={self.n_fft}, hop_length={self.hop_length}")
        if self.sample_rate <= 0:
            raise VRDataError(None, f"invalid sample rate {self.sample_rate}")
        if self.pad_mode not in _PAD_MODES:
            raise VRDataError(None, f"pad_mode {self.pad_mode!r} not supported (one of {', '.join(_PAD_MODES)})")

    @property
    def bins(self) -> int:
        """Frequency bins of the one-sided spectrum, DC to Nyquist."""
        return self.n_fft // 2 + 1

    @property
    def seconds_per_frame(self) -> float:
        return self.hop_length / self.sample_rate

    def frames_for(self, samples: int) -> int:
        """Exact frame count `stft` returns for a signal of `samples` samples."""
        samples = self.padded_samples(samples)
        if self.center:
            return 1 + samples // self.hop_length
        if samples < self.n_fft:
            return 0
        return 1 + (samples - self.n_fft) // self.hop_length

    def padded_samples(self, samples: int) -> int:
        """Signal length after the `pad_end` zeros (`samples` itself when `pad_end` is off)."""
        if not self.pad_end:
            return samples
        if self.center:
            return -(-samples // self.hop_length) * self.hop_length
        beyond = max(samples - self.n_fft, 0)
        return self.n_fft + -(-beyond // self.hop_length) * self.hop_length

    def samples_for(self, frames: int) -> int:
        """Samples `istft` returns without `length` for `frames` frames."""
        if frames <= 0:
            return 0
        span = self.n_fft + self.hop_length * (frames - 1)
        return span - 2 * (self.n_fft // 2) if self.center else span

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StftConfig":
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise VRDataError(None, f"unknown STFT config keys: {', '.join(sorted(unknown))}")
        return cls(**values)


@functools.lru_cache(maxsize=16)
def window_array(config: StftConfig) -> np.ndarray:
    """The analysis/synthesis window, float64 `(n_fft,)`, periodic as librosa's `fftbins=True`."""
    import scipy.signal

    window = scipy.signal.get_window(config.window, config.n_fft, fftbins=True).astype(np.float64)
    window.setflags(write=False)
    return window


def stft(audio: np.ndarray, config: StftConfig = StftConfig()) -> np.ndarray:
    """Complex64 `(channels, bins, frames)` of float audio `(channels, samples)` (or `(samples,)`,
    giving `(bins, frames)`), equal to `librosa.stft` with the same parameters to float32
    precision (of the signal zero-padded to `config.padded_samples(samples)`).

    A transposed view of `stft_frames_major`'s C-contiguous buffer, not itself C-contiguous.
    """
    audio = np.asarray(audio, dtype=np.float32)
    single = audio.ndim == 1
    audio = np.atleast_2d(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    frames_major = stft_frames_major(audio, config)  # (channels, frames, bins)
    spec = frames_major.transpose(0, 2, 1)  # (channels, bins, frames) view; callers rarely need C order
    return spec[0] if single else spec


def stft_frames_major(audio: np.ndarray, config: StftConfig = StftConfig()) -> np.ndarray:
    """Complex64 `(channels, frames, bins)`, C-contiguous: the FFT's natural order, no transpose."""
    audio = np.asarray(audio, dtype=np.float32)
    channels, samples = audio.shape
    frames = config.frames_for(samples)
    if frames == 0:
        raise VRDataError(None, f"{samples} samples are fewer than n_fft={config.n_fft} for an uncentred STFT")
    end_zeros = config.padded_samples(samples) - samples
    if end_zeros:
        audio = np.pad(audio, ((0, 0), (0, end_zeros)))
    if config.center:
        pad = config.n_fft // 2
        audio = np.pad(audio, ((0, 0), (pad, pad)), mode=config.pad_mode)
    # (channels, frames, n_fft) view without copying; the window product makes the one copy.
    framed = np.lib.stride_tricks.sliding_window_view(audio, config.n_fft, axis=-1)[:, :: config.hop_length]
    framed = framed[:, :frames] * window_array(config).astype(np.float32)
    import scipy.fft

    return scipy.fft.rfft(framed, axis=-1, workers=_workers()).astype(np.complex64, copy=False)


def istft(spec: np.ndarray, config: StftConfig = StftConfig(), length: int | None = None) -> np.ndarray:
    """Float32 audio `(channels, samples)` from complex `(channels, bins, frames)` (or `(bins, frames)`).

    Equal to `librosa.istft` to float32 precision: windowed overlap-add divided by the
    overlapped squared window where that is non-zero; `length` pads or trims to that many
    samples, otherwise `config.samples_for(frames)` samples.
    """
    spec = np.asarray(spec)
    single = spec.ndim == 2
    if single:
        spec = spec[None]
    if spec.ndim != 3 or spec.shape[1] != config.bins:
        raise ValueError(f"spectrogram must be (channels, {config.bins}, frames), got shape {spec.shape}")
    audio = istft_frames_major(spec.transpose(0, 2, 1), config, length)
    return audio[0] if single else audio


def istft_frames_major(spec: np.ndarray, config: StftConfig = StftConfig(), length: int | None = None) -> np.ndarray:
    """`istft` of complex `(channels, frames, bins)`, the layout `codec.decode_frames_major` gives."""
    channels, frames, bins = spec.shape
    n_fft, hop = config.n_fft, config.hop_length
    window = window_array(config).astype(np.float32)
    import scipy.fft

    framed = scipy.fft.irfft(spec.astype(np.complex64, copy=False), n=n_fft, axis=-1, workers=_workers())
    framed *= window  # (channels, frames, n_fft) float32
    signal = _overlap_add(framed, hop)  # (channels, n_fft + hop * (frames - 1))
    signal /= _squared_window_sum(config, frames)
    start = n_fft // 2 if config.center else 0
    if length is None:
        stop = start + config.samples_for(frames)
        return np.ascontiguousarray(signal[:, start:stop])
    audio = signal[:, start : start + length]
    if audio.shape[1] < length:
        audio = np.pad(audio, ((0, 0), (0, length - audio.shape[1])))
    return np.ascontiguousarray(audio)


def _overlap_add(framed: np.ndarray, hop: int) -> np.ndarray:
    """Sum frames `(channels, frames, n_fft)` placed `hop` apart -> `(channels, n_fft + hop*(frames-1))`.

    A frame spans `ceil(n_fft / hop)` hop-sized blocks; adding block k of every frame at once
    makes this a handful of vectorised adds instead of one add per frame.
    """
    channels, frames, n_fft = framed.shape
    blocks = -(-n_fft // hop)
    if blocks * hop != n_fft:
        framed = np.pad(framed, ((0, 0), (0, 0), (0, blocks * hop - n_fft)))
    out = np.zeros((channels, frames + blocks - 1, hop), dtype=framed.dtype)
    framed = framed.reshape(channels, frames, blocks, hop)
    for block in range(blocks):
        out[:, block : block + frames] += framed[:, :, block]
    return out.reshape(channels, -1)[:, : n_fft + hop * (frames - 1)]


@functools.lru_cache(maxsize=64)
def _squared_window_sum(config: StftConfig, frames: int) -> np.ndarray:
    """Overlapped squared window, float32 `(n_fft + hop * (frames - 1),)`, the istft divisor.

    Where it is (numerically) zero no frame covers the sample; librosa leaves those samples
    undivided, which a divisor of 1 reproduces.
    """
    squared = (window_array(config) ** 2).astype(np.float32)
    envelope = _overlap_add(np.broadcast_to(squared, (1, frames, config.n_fft)), config.hop_length)[0]
    envelope[envelope <= np.finfo(np.float32).tiny] = 1.0
    envelope.setflags(write=False)
    return envelope


def block_stft(audio: np.ndarray, config: StftConfig, first: int, last: int) -> np.ndarray:
    """Frames `[first, last)` of `stft(audio, config)`, complex64 `(channels, frames, bins)`.

    Only the samples those frames see are framed: the track's `pad_end` zeros and its centre
    padding are added where the block reaches the track's ends, exactly as the whole-track
    transform adds them, so a track transformed block by block gives the same frames.
    """
    samples = audio.shape[1]
    total = config.padded_samples(samples)  # the track with its pad_end zeros
    pad = config.n_fft // 2 if config.center else 0
    begin = first * config.hop_length - pad
    end = (last - 1) * config.hop_length - pad + config.n_fft
    piece = audio[:, max(begin, 0):min(end, samples)]
    end_zeros = max(0, min(end, total) - max(samples, begin, 0))
    if end_zeros:
        piece = np.pad(piece, ((0, 0), (0, end_zeros)))
    left, right = max(0, -begin), max(0, end - total)
    if left or right:
        piece = np.pad(piece, ((0, 0), (left, right)), mode=config.pad_mode)
    return stft_frames_major(piece, replace(config, center=False, pad_end=False))


_FFT_THREADS = 1


def _workers() -> int:
    """Threads scipy.fft may use. One: parallel work comes from processes (dask workers,
    DataLoader workers), and threads in each of them would oversubscribe the cores."""
    return _FFT_THREADS
