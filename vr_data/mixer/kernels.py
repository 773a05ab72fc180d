"""Mixing kernels: float16 stored crops in, normalisable float32 magnitudes out, in one pass.

Stored crops are frames-major float16 `(frames, channels=2, 2 [re, im], bins)` (see
`vr_data.store.codec`). One example is built from up to three such crops:

    mixture = A + vocal_gain[c] * V      (complex, per output channel c)
    target  = T                           (complex)

where A is the example's main crop, V its vocal crop and T its target crop: pairs: A = stored
mixture, V absent, T = stored instrumental; augmented mixes: A = T = instrumental, V = vocal;
pretraining and instrumental-only examples: A = T. Channel maps apply a
left/right swap, `mono` folds both channels to their mean. Because the STFT is linear, mixing in
the complex domain is exact: the same mixture as mixing the audio. The fused numba kernel reads
each float16 value once (through a 65536-entry float32 table: numba has no float16 arithmetic) and
writes magnitudes `(channels, bins, frames)`, the model's layout.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# float16 bit pattern -> float32 value; 256 KB, stays in cache.
F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
_TILE = 16  # frames per tile: writes of (bins, frames) outputs stay cache-line friendly


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def _mix_magnitudes(main, target, vocal, has_vocal, target_is_main, main_map, target_map, vocal_map, vocal_gain, mono,
                    table, out_mixture, out_target):
    frames = main.shape[0]
    bins = main.shape[3]
    peak = np.float32(0.0)
    for f0 in range(0, frames, _TILE):
        f1 = min(frames, f0 + _TILE)
        for k in range(bins):
            for f in range(f0, f1):
                mr0 = table[main[f, main_map[0], 0, k]]
                mi0 = table[main[f, main_map[0], 1, k]]
                mr1 = table[main[f, main_map[1], 0, k]]
                mi1 = table[main[f, main_map[1], 1, k]]
                if target_is_main:
                    tr0, ti0, tr1, ti1 = mr0, mi0, mr1, mi1
                else:
                    tr0 = table[target[f, target_map[0], 0, k]]
                    ti0 = table[target[f, target_map[0], 1, k]]
                    tr1 = table[target[f, target_map[1], 0, k]]
                    ti1 = table[target[f, target_map[1], 1, k]]
                if has_vocal:
                    mr0 += vocal_gain[0] * table[vocal[f, vocal_map[0], 0, k]]
                    mi0 += vocal_gain[0] * table[vocal[f, vocal_map[0], 1, k]]
                    mr1 += vocal_gain[1] * table[vocal[f, vocal_map[1], 0, k]]
                    mi1 += vocal_gain[1] * table[vocal[f, vocal_map[1], 1, k]]
                if mono:
                    mr0 = mr1 = 0.5 * (mr0 + mr1)
                    mi0 = mi1 = 0.5 * (mi0 + mi1)
                    tr0 = tr1 = 0.5 * (tr0 + tr1)
                    ti0 = ti1 = 0.5 * (ti0 + ti1)
                m0 = np.sqrt(mr0 * mr0 + mi0 * mi0)
                m1 = np.sqrt(mr1 * mr1 + mi1 * mi1)
                out_mixture[0, k, f] = m0
                out_mixture[1, k, f] = m1
                out_target[0, k, f] = np.sqrt(tr0 * tr0 + ti0 * ti0)
                out_target[1, k, f] = np.sqrt(tr1 * tr1 + ti1 * ti1)
                peak = max(peak, m0, m1)
    return peak


@njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
def scale_clip_in_place(values, factor):
    """values = min(values * factor, 1), in place, one pass: the crop-max normalisation's step.

    Used for the mixer's mixture and target and for inference crops alike
    (`InputNormalisation`), so both scale by the same float32 operation. On a mixture the clip
    only catches rounding: peak * (1 / peak) can be 1 + 1 ulp in float32."""
    flat = values.reshape(-1)
    for position in range(flat.size):
        flat[position] = min(flat[position] * factor, np.float32(1.0))


def mix_magnitudes(
    main: np.ndarray,
    target: np.ndarray | None = None,
    vocal: np.ndarray | None = None,
    *,
    vocal_gain: tuple[float, float] = (1.0, 1.0),
    swap_main: bool = False,
    swap_vocal: bool = False,
    mono: bool = False,
    out_mixture: np.ndarray | None = None,
    out_target: np.ndarray | None = None,
    normalise: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mixture and target magnitudes of one example, and the mixture's peak magnitude.

    `main`, `target`, `vocal`: float16 `(frames, 2, 2, bins)` stored crops (`target=None`: the
    target is `main`). `vocal_gain` is a linear gain per output channel (0 zeroes a channel, negative flips
    polarity). `swap_main` swaps left/right of `main` and the target, `swap_vocal` of the vocal.
    Returns float32 `(2, bins, frames)` mixture and target magnitudes (written into `out_*` if given)
    and the mixture's peak; `normalise=True` divides both by that peak (crop-max normalisation,
    the target clipped to 1) in one more pass.
    """
    frames, _, _, bins = main.shape
    if out_mixture is None:
        out_mixture = np.empty((2, bins, frames), np.float32)
    if out_target is None:
        out_target = np.empty((2, bins, frames), np.float32)
    main_map = np.array([1, 0] if swap_main else [0, 1], np.int64)
    vocal_map = np.array([1, 0] if swap_vocal else [0, 1], np.int64)
    main_bits = _bits(main)
    peak = float(_mix_magnitudes(
        main_bits, main_bits if target is None else _bits(target), main_bits if vocal is None else _bits(vocal),
        vocal is not None, target is None, main_map, main_map, vocal_map, np.asarray(vocal_gain, np.float32), mono,
        F16_TABLE, out_mixture, out_target,
    ))
    if normalise and peak > 0:
        factor = np.float32(1.0 / peak)
        scale_clip_in_place(out_mixture, factor)
        scale_clip_in_place(out_target, factor)
    return out_mixture, out_target, peak


def _bits(stored: np.ndarray) -> np.ndarray:
    if stored.dtype != np.float16 or stored.ndim != 4 or stored.shape[1] != 2 or stored.shape[2] != 2:
        raise ValueError(f"expected float16 (frames, 2, 2, bins), got {stored.dtype} {stored.shape}")
    return stored.view(np.uint16)


def complex_from_stored(stored: np.ndarray) -> np.ndarray:
    """float16 `(frames, 2, 2, bins)` -> complex64 `(2, bins, frames)` (reference path, tests)."""
    values = stored.astype(np.float32)
    return (values[:, :, 0, :] + 1j * values[:, :, 1, :]).transpose(1, 2, 0).astype(np.complex64)


def crop_level_dbfs(stored: np.ndarray, window_energy: float, frame_step: int = 1) -> float:
    """Approximate RMS level (dBFS) of the audio behind a stored crop, from its STFT.

    For a Hann-windowed one-sided STFT, mean |X|^2 over bins is about rms^2 * sum(window^2)
    (Parseval), so `window_energy = sum(window**2)` (768 for Hann, n_fft 2048) maps it back.
    Padding frames (all zero) count as silence. `frame_step` > 1 looks at every n-th frame only
    (a level estimate does not need all of them; the training hot path uses 8).
    """
    power = _mean_square(_bits(stored)[::frame_step], F16_TABLE) * 2.0  # re^2 + im^2
    if power <= 0.0:
        return float("-inf")
    return float(10.0 * np.log10(power / window_energy))


@njit(cache=True, fastmath=True, nogil=True)
def _mean_square(bits, table):
    total = 0.0
    for f in range(bits.shape[0]):
        for c in range(bits.shape[1]):
            for part in range(bits.shape[2]):
                for k in range(bits.shape[3]):
                    value = table[bits[f, c, part, k]]
                    total += value * value
    return total / max(bits.size, 1)


def mix_complex(
    main: np.ndarray,
    target: np.ndarray | None = None,
    vocal: np.ndarray | None = None,
    *,
    vocal_gain: tuple[float, float] = (1.0, 1.0),
    swap_main: bool = False,
    swap_vocal: bool = False,
    mono: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The same example as `mix_magnitudes`, as complex64 `(2, bins, frames)` mixture and target.

    The reference path: previews (which need phase to resynthesise audio) and tests.
    """
    main_complex = complex_from_stored(main)
    target_complex = main_complex if target is None else complex_from_stored(target)
    if swap_main:
        main_complex, target_complex = main_complex[::-1], target_complex[::-1]
    mixture = main_complex.copy()
    if vocal is not None:
        vocal_complex = complex_from_stored(vocal)
        if swap_vocal:
            vocal_complex = vocal_complex[::-1]
        mixture = mixture + np.asarray(vocal_gain, np.float32)[:, None, None] * vocal_complex
    if mono:
        mixture = np.repeat(mixture.mean(axis=0, keepdims=True), 2, axis=0)
        target_complex = np.repeat(target_complex.mean(axis=0, keepdims=True), 2, axis=0)
    return mixture.astype(np.complex64), np.ascontiguousarray(target_complex, dtype=np.complex64)
