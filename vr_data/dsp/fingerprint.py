"""Content fingerprints: landmark hashes of spectral peak triplets (after Wang 2003, "Shazam").

A fingerprint says *which song* a file holds, whatever was done to its bytes: re-encoding (mp3,
ogg, 16-bit), resampling, gain, mono/stereo folding, a trim or an offset, or cutting an
excerpt. Steps, all in `fingerprint_audio`:

1. fold to mono and resample to 4 kHz (`FP_RATE`): what survives every codec and rate, and half
   the cost of 8 kHz with the same landmarks' robustness (measured: docs/performance.md);
2. power STFT, `N_FFT` = 512 (128 ms, 7.8 Hz bins), hop `HOP` = 256 (64 ms per frame);
3. peaks: local maxima of the power over +-`PEAK_BINS` bins and +-`PEAK_FRAMES` frames, kept
   when fewer than `PEAKS_PER_SECOND` stronger peaks lie within +-`BUDGET_FRAMES` frames (about
   one second centred on the peak), ranked by level so gain changes nothing. The window slides
   with the peak: a budget over fixed one-second blocks would change which peaks are kept when a
   trim moves the block edges, and landmarks of a trimmed copy would be lost;
4. landmarks: each peak (anchor) with its next `FANOUT` peaks 1..`MAX_DT` frames later and
   within +-`MAX_DF` bins, taken two at a time (triplets: `FANOUT * (FANOUT - 1) / 2` per anchor);
   hash = (anchor bin, two bin differences, two frame differences), quantised into
   `HASH_BITS` = 28 bits (`triplet_hash`).

A fingerprint is `(hashes uint32 (n,), times int32 (n,))`, `times` the anchor frame. Two files
hold the same audio when many hashes agree at one time difference (`vr_data.quality.search`):
a trim or offset moves every landmark together, an excerpt keeps a subset of them, and a
codec loses some peaks but keeps most. Why triplets: a peak pair's 22 bits gave hash buckets
that grow with the corpus (1 landmark in 4 M shares a hash by chance: with 90 M landmarks every
bucket holds about 20, and the search meets them all); a triplet's 28 bits make chance
collisions 64 times rarer (half a landmark per bucket at 150 M landmarks), at the price of a
landmark needing three peaks to survive instead of two. Why landmarks rather than Chromaprint: Chromaprint's
fingerprint is a sequence of 32-bit chroma words matched by aligning whole sequences, good at
whole-track identity and weak at short excerpts; landmarks match any overlap of a few seconds
and need no binary (`fpcalc` is not a Python dependency). Measured: docs/performance.md.

The manifest stores `encode(...)`: `VERSION:` then base64 of zlib(count as uint32, time deltas
as uint16, hashes as 4 byte planes): 6 bytes a landmark before zlib, about 5 characters after
zlib and base64 (synthetic music gives 17 to 24 landmarks a second: about 100 bytes a second).
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

VERSION = "lm2"
FP_RATE = 4000
N_FFT = 512
HOP = 256
# soxr's quick quality: twice as fast as MQ; what it aliases differs between a 44.1 and a 48 kHz
# copy, and still such copies keep most landmarks (docs/performance.md, "data quality").
RESAMPLE_QUALITY = "QQ"
FRAME_SECONDS = HOP / FP_RATE
LOW_BIN, HIGH_BIN = 4, 240          # 31 Hz to 1.875 kHz: below the 2 kHz Nyquist and any codec cut-off
PEAK_BINS, PEAK_FRAMES = 20, 3      # neighbourhood of a peak: +-156 Hz, +-192 ms
PEAKS_PER_SECOND = 6
BUDGET_FRAMES = 8                   # the budget's window: +-512 ms around the peak
FANOUT = 4
MAX_DT, MAX_DF = 31, 63             # target zone: up to 2 s later, +-490 Hz
FLOOR_DB = 70.0                     # peaks more than this below the file's loudest bin are noise
HASH_BITS = 28


def fingerprint_audio(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of `audio` float `(channels, samples)` at `sample_rate` Hz: `(hashes, times)`.

    Both arrays have one entry per landmark; `times` are anchor frames of `FRAME_SECONDS`.
    Silence and very short audio give empty arrays.
    """
    mono = np.asarray(audio, dtype=np.float32)
    if mono.ndim == 2:  # the sum of the channels, not their mean: the level does not matter (peaks are ranked)
        mono = mono[0] if len(mono) == 1 else mono[0] + mono[1] if len(mono) == 2 else np.add.reduce(mono, axis=0)
    if sample_rate != FP_RATE and mono.size:
        import soxr

        mono = soxr.resample(mono, sample_rate, FP_RATE, quality=RESAMPLE_QUALITY)
    peaks_t, peaks_f = spectral_peaks(mono)
    return landmarks(peaks_t, peaks_f)


def spectral_peaks(mono: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak frames and bins of mono `FP_RATE` audio float32 `(samples,)`, sorted by frame then bin
    (see the module docstring): two int32 arrays `(peaks,)`."""
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
    flat = np.flatnonzero(power == local.T)  # by frame, then bin
    strength = power.ravel()[flat]
    loud = strength > loudest * 10 ** (-FLOOR_DB / 10)
    t, f = np.divmod(flat[loud], power.shape[1])
    keep = within_budget(t, strength[loud], BUDGET_FRAMES, PEAKS_PER_SECOND)
    return t[keep].astype(np.int32), (f[keep] + LOW_BIN).astype(np.int32)


def within_budget(times: np.ndarray, strength: np.ndarray, radius: int, budget: int) -> np.ndarray:
    """Boolean `(peaks,)`: peak `i` has fewer than `budget` stronger peaks `j` with
    `|times[j] - times[i]| <= radius` (`times` ascending; a tie goes to the earlier index).

    Each peak is compared with its neighbours in time order, one distance at a time: a window
    holds a few dozen peaks, so this is a few dozen vectorised passes.
    """
    count = len(times)
    lo = np.searchsorted(times, times - radius, side="left")
    hi = np.searchsorted(times, times + radius, side="right")
    index = np.arange(count)
    stronger = np.zeros(count, np.int32)
    widest = int(max((hi - index).max(initial=0), (index - lo).max(initial=0)))
    for distance in range(1, widest + 1):
        later = index[:count - distance]  # i, compared with i + distance (in the window when < hi[i])
        inside = later + distance < hi[later]
        ahead = strength[distance:] > strength[:count - distance]
        stronger[later] += inside & ahead
        # ... and i + distance compared with i (in its window when i >= lo[i + distance]): ties go to i.
        behind = strength[:count - distance] >= strength[distance:]
        stronger[later + distance] += (later >= lo[later + distance]) & behind
    return stronger < budget


def triplet_hash(anchor_bin: np.ndarray, df1: np.ndarray, df2: np.ndarray, dt1: np.ndarray,
                 dt2: np.ndarray) -> np.ndarray:
    """The 28-bit hash of triplets, uint32 `(n,)`: the anchor bin (8 bits, < `HIGH_BIN`), the two
    bin differences (7 bits each, +-`MAX_DF`), the two frame differences in 4-frame steps (3 bits
    each, 1..`MAX_DT`). Frequencies survive a shift in time; a peak's frame moves by one when the
    audio moves by part of a hop, and the coarse step keeps most such landmarks' hashes."""
    return (np.asarray(anchor_bin, np.uint32) << 20 | (df1 + 64).astype(np.uint32) << 13
            | (df2 + 64).astype(np.uint32) << 6 | (dt1.astype(np.uint32) >> 2) << 3 | dt2.astype(np.uint32) >> 2)


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
    """Triplets of peaks `(peaks,)` sorted by frame: `(hashes uint32, anchor times int32)`, one
    entry per landmark, sorted by time then hash.

    Each anchor's targets are its first `FANOUT` later peaks (in peak order) in the target zone;
    every two of them make a landmark with the anchor.
    """
    count = len(peaks_t)
    if count < 3:
        return np.zeros(0, np.uint32), np.zeros(0, np.int32)
    # Candidates: the next few peaks of each anchor, (peaks, lookahead); the first FANOUT in the zone are kept.
    candidate = np.arange(count)[:, None] + np.arange(1, 4 * FANOUT)
    exists = candidate < count
    candidate = np.minimum(candidate, count - 1)
    dt = peaks_t[candidate] - peaks_t[:, None]
    df = peaks_f[candidate] - peaks_f[:, None]
    zone = exists & (dt >= 1) & (dt <= MAX_DT) & (np.abs(df) <= MAX_DF)
    rank = np.cumsum(zone, axis=1) - 1  # 0 for an anchor's first target in the zone
    anchors, columns = np.nonzero(zone & (rank < FANOUT))
    targets = np.full((count, FANOUT), -1, np.int64)  # peak index of each anchor's targets, -1: none
    targets[anchors, rank[anchors, columns]] = candidate[anchors, columns]
    first, second = np.triu_indices(FANOUT, k=1)  # every two targets: (FANOUT * (FANOUT - 1) / 2,)
    anchors, pairs = np.nonzero(targets[:, second] >= 0)
    one, two = targets[anchors, first[pairs]], targets[anchors, second[pairs]]
    hashes = triplet_hash(peaks_f[anchors], peaks_f[one] - peaks_f[anchors], peaks_f[two] - peaks_f[anchors],
                          peaks_t[one] - peaks_t[anchors], peaks_t[two] - peaks_t[anchors])
    anchor_times = peaks_t[anchors]
    order = np.lexsort((hashes, anchor_times))
    return hashes[order], anchor_times[order].astype(np.int32)


def encode(hashes: np.ndarray, times: np.ndarray) -> str:
    """The manifest form of a fingerprint (see the module docstring); `times` sorted ascending."""
    times = np.asarray(times, np.int64)
    deltas = np.diff(times, prepend=0)
    if len(deltas) and (deltas.min() < 0 or deltas.max() > 0xFFFF):
        raise ValueError("fingerprint times must ascend by at most 65535 frames")
    hashes = np.asarray(hashes, np.uint32)
    packed = np.stack([(hashes >> shift) & 0xFF for shift in (0, 8, 16, 24)]).astype(np.uint8)  # byte planes: zlib likes them
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
    if len(payload) != 4 + 6 * count:
        raise ValueError("damaged fingerprint (length does not match its count)")
    deltas = np.frombuffer(payload[4:4 + 2 * count], "<u2").astype(np.int64)
    packed = np.frombuffer(payload[4 + 2 * count:], np.uint8).reshape(4, count).astype(np.uint32)
    hashes = packed[0] | (packed[1] << 8) | (packed[2] << 16) | (packed[3] << 24)
    return hashes, np.cumsum(deltas).astype(np.int32)


def is_current(text: str | None) -> bool:
    """Whether a stored fingerprint was made by this version (else a rescan recomputes it)."""
    return isinstance(text, str) and text.startswith(VERSION + ":")
