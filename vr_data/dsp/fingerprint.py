"""Content fingerprints: landmark hashes of spectral peak pairs (Wang 2003, "Shazam").

A fingerprint says *which song* a file holds, whatever was done to its bytes: re-encoding (mp3,
ogg, 16-bit), resampling, gain, mono/stereo folding, a trim or an offset, or cutting an
excerpt. Steps, all in `fingerprint_audio`:

1. fold to mono and resample to 8 kHz (`FP_RATE`): what survives every codec and rate;
2. log-magnitude STFT, `N_FFT` = 1024 (128 ms), hop `HOP` = 256 (32 ms per frame);
3. peaks: local maxima of the power over +-`PEAK_BINS` bins and +-`PEAK_FRAMES` frames, at most
   `PEAKS_PER_SECOND` a second (the strongest), ranked by level so gain changes nothing;
4. landmarks: each peak (anchor) paired with its next `FANOUT` peaks 1..`MAX_DT` frames later
   and within +-`MAX_DF` bins; hash = (anchor bin, bin difference, frame difference) in 22 bits.

A fingerprint is `(hashes uint32 (n,), times int32 (n,))`, `times` the anchor frame. Two files
hold the same audio when many hashes agree at one time difference (`vr_data.quality.search`):
a trim or offset moves every landmark together, an excerpt keeps a subset of them, and a
codec loses some peaks but keeps most. Why landmarks rather than Chromaprint: Chromaprint's
fingerprint is a sequence of 32-bit chroma words matched by aligning whole sequences, good at
whole-track identity and weak at short excerpts; landmarks match any overlap of a few seconds
and need no binary (`fpcalc` is not a Python dependency). Measured: docs/performance.md.

The manifest stores `encode(...)`: `VERSION:` then base64 of zlib(time deltas as uint16 +
hashes as 3 bytes), about 4 bytes per landmark (18 landmarks a second: ~70 bytes a second).
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

VERSION = "lm1"
FP_RATE = 8000
N_FFT = 1024
HOP = 256
# soxr's quick quality: twice as fast as MQ, and the landmarks of a 48 kHz copy still agree
# with those of the 44.1 kHz original at 89 % (MQ: 100 %; either is far above what matching needs).
RESAMPLE_QUALITY = "QQ"
FRAME_SECONDS = HOP / FP_RATE
LOW_BIN, HIGH_BIN = 4, 480          # 31 Hz to 3.75 kHz: below the 8 kHz Nyquist and any codec cut-off
PEAK_BINS, PEAK_FRAMES = 20, 6      # neighbourhood of a peak: +-156 Hz, +-192 ms
PEAKS_PER_SECOND = 6
FANOUT = 3
MAX_DT, MAX_DF = 63, 63            # target zone: up to 2 s later, +-490 Hz
FLOOR_DB = 70.0                     # peaks more than this below the file's loudest bin are noise
_BLOCK = int(round(1.0 / FRAME_SECONDS))  # frames per second: the unit of the peak budget


def fingerprint_audio(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of `audio` float `(channels, samples)` at `sample_rate` Hz: `(hashes, times)`.

    Both arrays have one entry per landmark; `times` are anchor frames of `FRAME_SECONDS`.
    Silence and very short audio give empty arrays.
    """
    mono = np.asarray(audio, dtype=np.float32)
    if mono.ndim == 2:
        mono = mono[0] if len(mono) == 1 else np.add.reduce(mono, axis=0) * np.float32(1 / len(mono))
    if sample_rate != FP_RATE and mono.size:
        import soxr

        mono = soxr.resample(mono, sample_rate, FP_RATE, quality=RESAMPLE_QUALITY)
    peaks_t, peaks_f = spectral_peaks(mono)
    return landmarks(peaks_t, peaks_f)


def spectral_peaks(mono: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak frames and bins of mono 8 kHz audio, sorted by frame (see the module docstring)."""
    import scipy.fft

    frames = (len(mono) - N_FFT) // HOP + 1
    if frames < 2:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    view = np.lib.stride_tricks.sliding_window_view(mono, N_FFT)[::HOP][:frames]
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    spectrum = scipy.fft.rfft(view * window, axis=1, workers=1)[:, LOW_BIN:HIGH_BIN]
    power = spectrum.real ** 2 + spectrum.imag ** 2  # (frames, bins), float32
    loudest = float(power.max())
    if loudest < 1e-15:  # digital silence
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    # Neighbourhood maximum, bins axis leading in the second pass (contiguous: twice as fast).
    local = sliding_max(sliding_max(power, PEAK_FRAMES, axis=0).T, PEAK_BINS, axis=0)  # (bins, frames)
    by_bin = np.ascontiguousarray(power.T)
    flat = np.flatnonzero(by_bin == local)
    strength = by_bin.ravel()[flat]
    f, t = np.divmod(flat[strength > loudest * 10 ** (-FLOOR_DB / 10)], by_bin.shape[1])
    strength = strength[strength > loudest * 10 ** (-FLOOR_DB / 10)]
    order = np.lexsort((f, t))  # by frame, then bin: ties below are broken the same way every time
    t, f, strength = t[order], f[order], strength[order]
    # The strongest PEAKS_PER_SECOND per one-second block: a budget, ranked, so gain is irrelevant.
    block = t // _BLOCK
    order = np.lexsort((-strength, block))
    t, f, block = t[order], f[order], block[order]
    starts = np.searchsorted(block, block, side="left")
    keep = np.arange(len(block)) - starts < PEAKS_PER_SECOND
    t, f = t[keep], f[keep]
    order = np.lexsort((f, t))
    return t[order].astype(np.int32), (f[order] + LOW_BIN).astype(np.int32)


def sliding_max(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """`max(values[i - radius : i + radius + 1])` along `axis` (-inf beyond the ends), same shape.

    Doubling: after k steps `running[i]` is the max of `2**k` values from `i`, so a window of
    `w = 2 * radius + 1` is the max of two overlapping power-of-two spans (log2(w) passes; about
    6x faster than scipy.ndimage.maximum_filter1d here, as the fingerprint's largest cost).
    """
    moved = np.ascontiguousarray(np.moveaxis(values, axis, 0))  # strided slices of a copy: faster
    count, width = moved.shape[0], 2 * radius + 1
    pad = np.full((radius,) + moved.shape[1:], -np.inf, moved.dtype)
    running, span = np.concatenate([pad, moved, pad]), 1
    while span * 2 <= width:
        running, span = np.maximum(running[:-span], running[span:]), span * 2
    return np.moveaxis(np.maximum(running[:count], running[width - span:width - span + count]), 0, axis)


def landmarks(peaks_t: np.ndarray, peaks_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair each peak with its next `FANOUT` peaks in the target zone: `(hashes, anchor times)`."""
    hashes, times = [], []
    n = len(peaks_t)
    for step in range(1, 4 * FANOUT):  # look a few peaks ahead; FANOUT of them are kept per anchor
        if step >= n:
            break
        dt = peaks_t[step:] - peaks_t[:-step]
        df = peaks_f[step:] - peaks_f[:-step]
        ok = (dt >= 1) & (dt <= MAX_DT) & (np.abs(df) <= MAX_DF)
        anchors = np.nonzero(ok)[0]
        hashes.append((peaks_f[anchors].astype(np.uint32) << 13) | ((df[anchors] + 64).astype(np.uint32) << 6)
                      | dt[anchors].astype(np.uint32))
        times.append(np.stack([anchors, np.full(len(anchors), step)]))
    if not hashes:
        return np.zeros(0, np.uint32), np.zeros(0, np.int32)
    hash_all = np.concatenate(hashes)
    anchor_step = np.concatenate(times, axis=1)
    # Keep the first FANOUT targets of each anchor (nearest in peak order).
    order = np.lexsort((anchor_step[1], anchor_step[0]))
    anchor = anchor_step[0][order]
    rank = np.arange(len(anchor)) - np.searchsorted(anchor, anchor, side="left")
    keep = order[rank < FANOUT]
    hash_all, anchor = hash_all[keep], anchor_step[0][keep]
    anchor_times = peaks_t[anchor]
    order = np.lexsort((hash_all, anchor_times))
    return hash_all[order], anchor_times[order].astype(np.int32)


def encode(hashes: np.ndarray, times: np.ndarray) -> str:
    """The manifest form of a fingerprint (see the module docstring); `times` sorted ascending."""
    times = np.asarray(times, np.int64)
    deltas = np.diff(times, prepend=0)
    if len(deltas) and (deltas.min() < 0 or deltas.max() > 0xFFFF):
        raise ValueError("fingerprint times must ascend by at most 65535 frames")
    hashes = np.asarray(hashes, np.uint32)
    packed = np.stack([hashes & 0xFF, (hashes >> 8) & 0xFF, (hashes >> 16) & 0xFF]).astype(np.uint8)
    payload = np.array([len(hashes)], "<u4").tobytes() + deltas.astype("<u2").tobytes() + packed.tobytes()
    return f"{VERSION}:" + base64.b64encode(zlib.compress(payload, 6)).decode("ascii")


def decode(text: str) -> tuple[np.ndarray, np.ndarray]:
    """`(hashes, times)` of an `encode`d fingerprint; ValueError when it is not one of this version."""
    prefix, _, body = text.partition(":")
    if prefix != VERSION:
        raise ValueError(f"fingerprint version {prefix!r} is not {VERSION!r}")
    try:
        payload = zlib.decompress(base64.b64decode(body, validate=True))
    except (ValueError, zlib.error) as error:
        raise ValueError(f"damaged fingerprint ({error})") from None
    if len(payload) < 4:
        raise ValueError("damaged fingerprint (too short)")
    count = int(np.frombuffer(payload[:4], "<u4")[0])
    if len(payload) != 4 + 5 * count:
        raise ValueError("damaged fingerprint (length does not match its count)")
    deltas = np.frombuffer(payload[4:4 + 2 * count], "<u2").astype(np.int64)
    packed = np.frombuffer(payload[4 + 2 * count:], np.uint8).reshape(3, count).astype(np.uint32)
    hashes = packed[0] | (packed[1] << 8) | (packed[2] << 16)
    return hashes, np.cumsum(deltas).astype(np.int32)


def is_current(text: str | None) -> bool:
    """Whether a stored fingerprint was made by this version (else a rescan recomputes it)."""
    return isinstance(text, str) and text.startswith(VERSION + ":")
