"""Level measures of decoded audio: integrated loudness (ITU-R BS.1770-4), peak, clipping, silence.

Integrated loudness follows BS.1770-4: each channel is K-weighted (a high-shelf "pre-filter"
then the RLB high-pass), mean squares are taken over 400 ms blocks overlapping by 75 %
(100 ms step), block loudness is `-0.691 + 10 log10(sum_c G_c z_c)` with channel weights
`G = 1` for left and right, blocks below the absolute gate (-70 LUFS) are dropped, then blocks
more than 10 LU below the loudness of the remaining ones, and the result is the loudness of the
mean over the blocks left. The K-weighting biquads are designed from the analogue prototype of
the standard's 48 kHz coefficients (as libebur128 does), so any sample rate gives the same
loudness; at 48 kHz they equal the standard's table. Audio shorter than one block, or whose
blocks are all gated, has no integrated loudness: `-inf`.

Audio is float `(channels, samples)` in full-scale units (a sample of 1.0 is 0 dBFS).
Levels in dBFS here are plain 20 log10 of amplitude: a full-scale sine has RMS -3.01 dBFS.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.signal

BLOCK_SECONDS = 0.4
STEP_SECONDS = 0.1
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
CLIP_LEVEL = 0.999                 # |sample| at or above counts as clipped
SILENCE_WINDOW_SECONDS = 0.1
SILENCE_DBFS = -60.0               # window RMS below this is silence
BLOCK_SAMPLES = 1 << 20            # samples processed at once: bounds the float64 working memory

# Analogue prototype of the BS.1770 K-weighting stages (libebur128's derivation of the
# standard's 48 kHz coefficients): shelf gain (dB), Q and corner (Hz), then high-pass Q and corner.
_SHELF_GAIN_DB = 3.999843853973347
_SHELF_Q = 0.7071752369554196
_SHELF_HZ = 1681.974450955533
_HIGHPASS_Q = 0.5003270373238773
_HIGHPASS_HZ = 38.13547087602444


@functools.lru_cache(maxsize=16)
def k_weighting(sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`((b, a) of the pre-filter, (b, a) of the RLB high-pass)` for `sample_rate` Hz."""
    k = np.tan(np.pi * _SHELF_HZ / sample_rate)
    gain = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    band = gain ** 0.4996667741545416
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf_b = np.array([(gain + band * k / _SHELF_Q + k * k) / a0, 2.0 * (k * k - gain) / a0,
                        (gain - band * k / _SHELF_Q + k * k) / a0])
    shelf_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _SHELF_Q + k * k) / a0])
    k = np.tan(np.pi * _HIGHPASS_HZ / sample_rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    highpass_b = np.array([1.0, -2.0, 1.0])
    highpass_a = np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _HIGHPASS_Q + k * k) / a0])
    return (shelf_b, shelf_a), (highpass_b, highpass_a)


def block_loudness(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Loudness (LUFS) of every 400 ms block, 100 ms apart, float64 `(blocks,)`; `-inf` for silence.

    Only whole blocks count: `floor((samples - block) / step) + 1` of them (none if shorter).
    """
    audio = np.atleast_2d(audio)
    step = int(round(STEP_SECONDS * sample_rate))
    steps_per_block = int(round(BLOCK_SECONDS / STEP_SECONDS))
    steps = audio.shape[-1] // step
    if steps < steps_per_block:
        return np.zeros(0)
    # Channel weights are 1 for L and R: the energies of the channels add. Each block is four
    # consecutive 100 ms steps.
    energy = sum(_weighted_step_energy(channel, sample_rate, step, steps) for channel in audio)
    blocks = steps - steps_per_block + 1
    block_energy = sum(energy[offset : offset + blocks] for offset in range(steps_per_block)) / (step * steps_per_block)
    with np.errstate(divide="ignore"):
        return -0.691 + 10.0 * np.log10(block_energy)


def _weighted_step_energy(channel: np.ndarray, sample_rate: int, step: int, steps: int) -> np.ndarray:
    """Sum of squares of the K-weighted `channel` over each of its first `steps` steps, float64.

    Filtered piece by piece with the filter state carried over (the same result as filtering the
    whole signal at once), so memory stays bounded for hour-long tracks.
    """
    (shelf_b, shelf_a), (highpass_b, highpass_a) = k_weighting(int(sample_rate))
    shelf_state, highpass_state = np.zeros(2), np.zeros(2)
    energy = np.empty(steps)
    steps_per_piece = max(1, BLOCK_SAMPLES // step)
    for first in range(0, steps, steps_per_piece):
        last = min(first + steps_per_piece, steps)
        piece = np.asarray(channel[first * step : last * step], dtype=np.float64)
        piece, shelf_state = scipy.signal.lfilter(shelf_b, shelf_a, piece, zi=shelf_state)
        piece, highpass_state = scipy.signal.lfilter(highpass_b, highpass_a, piece, zi=highpass_state)
        energy[first:last] = np.square(piece).reshape(last - first, step).sum(axis=1)
    return energy


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness (LUFS) of `(channels, samples)` audio; `-inf` if all gated."""
    loudness = block_loudness(audio, sample_rate)
    loudness = loudness[loudness > ABSOLUTE_GATE_LUFS]
    if loudness.size == 0:
        return float("-inf")
    energy = 10.0 ** ((loudness + 0.691) / 10.0)
    relative_gate = -0.691 + 10.0 * np.log10(energy.mean()) + RELATIVE_GATE_LU
    kept = energy[loudness > relative_gate]
    if kept.size == 0:
        return float("-inf")
    return float(-0.691 + 10.0 * np.log10(kept.mean()))


def peak_dbfs(audio: np.ndarray) -> float:
    """Largest |sample| over all channels, dBFS (`-inf` for digital silence)."""
    peak = float(np.max(np.abs(audio))) if np.size(audio) else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def clipped_samples(audio: np.ndarray, level: float = CLIP_LEVEL) -> int:
    """Samples (counted per channel) with |x| >= `level`: at or next to full scale."""
    return int(np.count_nonzero(np.abs(audio) >= level))


def silence_fraction(audio: np.ndarray, sample_rate: int, threshold_dbfs: float = SILENCE_DBFS,
                     window_seconds: float = SILENCE_WINDOW_SECONDS) -> float:
    """Fraction of the duration in silent windows: consecutive `window_seconds` windows (the last
    may be shorter) whose RMS over both channels is below `threshold_dbfs`; 0 for no audio."""
    audio = np.atleast_2d(audio)
    channels, samples = audio.shape
    if samples == 0:
        return 0.0
    window = max(1, int(round(window_seconds * sample_rate)))
    threshold = 10.0 ** (threshold_dbfs / 10.0)
    silent_samples = 0
    windows_per_piece = max(1, BLOCK_SAMPLES // window)
    for start in range(0, samples, window * windows_per_piece):  # piece by piece: bounded memory
        piece = np.asarray(audio[:, start : start + window * windows_per_piece], dtype=np.float64)
        starts = np.arange(0, piece.shape[1], window)
        lengths = np.diff(np.append(starts, piece.shape[1]))
        power = np.add.reduceat(np.square(piece).sum(axis=0), starts) / (channels * lengths)
        silent_samples += int(lengths[power < threshold].sum())
    return silent_samples / samples
