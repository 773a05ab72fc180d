"""Spectral statistics shared by manifest and store statistics.

Per-frequency-bin moments of the log magnitude `ln(|X| + eps)` (the input normalisation of a
model: one mean and std per bin, over all frames and both channels), and the level of each STFT
frame from its power spectrum (Parseval), for silence and level statistics on stores, where
the audio itself is not kept.

Shapes: magnitudes float `(rows, bins)` where a row is one channel of one frame; power
spectra float `(frames, channels, bins)`.
"""

from __future__ import annotations

import functools

import numpy as np

from vr_data.stats.running import RunningMoments
from vr_data.dsp.stft import StftConfig, window_array

SLICE_ROWS = 1024  # rows per float64 pass: bounds the temporary memory to about 8 MB per 1025 bins


def log_magnitude_moments(magnitude: np.ndarray, eps: float, moments: RunningMoments | None = None) -> RunningMoments:
    """Fold `ln(magnitude + eps)` of `(rows, bins)` into per-bin `moments` (new when None)."""
    magnitude = np.asarray(magnitude)
    bins = magnitude.shape[-1]
    moments = moments if moments is not None else RunningMoments((bins,))
    for start in range(0, magnitude.shape[0], SLICE_ROWS):
        moments.update(np.log(magnitude[start : start + SLICE_ROWS].astype(np.float64) + eps))
    return moments


@functools.lru_cache(maxsize=8)
def parseval_weights(config: StftConfig) -> np.ndarray:
    """Float64 `(bins,)` with `sum_k weights[k] |X_k|^2` = the window-weighted mean square of a frame.

    By Parseval, `sum_n (w[n] x[n])^2 = (|X_0|^2 + 2 sum |X_k|^2 + |X_{N/2}|^2) / N` for the
    one-sided spectrum of an even `N = n_fft` (odd `N`: no Nyquist bin); dividing by `sum w^2`
    gives the mean square of the frame's samples weighted by the squared window, so a
    stationary sine of amplitude A reads A^2 / 2 (-3.01 dBFS at full scale), as the RMS of samples.
    """
    n_fft = config.n_fft
    weights = np.full(config.bins, 2.0)
    weights[0] = 1.0
    if n_fft % 2 == 0:
        weights[-1] = 1.0
    weights /= n_fft * float(np.sum(window_array(config) ** 2))
    weights.setflags(write=False)  # cached: callers share this array
    return weights


def frame_mean_square(power: np.ndarray, config: StftConfig) -> np.ndarray:
    """Mean square (full-scale units) of each frame, averaged over channels: float64 `(frames,)`.

    `power` is `|X|^2` as `(frames, channels, bins)`.
    """
    return np.tensordot(np.asarray(power, dtype=np.float64), parseval_weights(config), axes=([2], [0])).mean(axis=1)


def level_db(mean_square: np.ndarray | float) -> np.ndarray | float:
    """10 log10 of a mean square: dBFS (`-inf` for silence)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(mean_square)
