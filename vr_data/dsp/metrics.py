"""Signal-quality measures shared by codec checks, benchmarks and evaluation."""

from __future__ import annotations

import numpy as np


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of `estimate` against `reference` (any equal shapes).

    Energy of the reference over energy of the difference, summed over the whole array, so a
    track's SNR weighs its quiet passages by their energy. `inf` for an exact copy (an all-zero
    estimate of an all-zero reference included); `-inf` for a non-zero estimate of silence.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, estimate {estimate.shape}")
    signal = float(np.sum(np.abs(reference) ** 2))
    noise = float(np.sum(np.abs(reference - estimate) ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))
