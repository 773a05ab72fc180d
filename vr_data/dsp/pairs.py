"""Pair checks: does a mixture equal its instrumental plus a vocal? Measures and flags.

`measure_pair(mixture, instrumental, rate, lag)` takes mono excerpts at one rate, the
instrumental's lag found by cross-correlation (`vr_data.catalog.scan.estimate_offset`), and
measures, after aligning them by that lag (levels in dB):

- `gain_db`: the mixture's level relative to the instrumental's where the instrumental
  dominates: the median least-squares gain `<m, i> / <i, i>` of the 50 ms frames whose
  mixture and instrumental correlate at >= 0.9 (no vocal there), else of the loudest half;
  0 dB for a true pair (a vocal is uncorrelated with its instrumental);
- `residual_db`: the level of `mixture - instrumental` (the vocal) against the instrumental;
- `instrumental_over_mixture_db`: the instrumental's level minus the mixture's;
- `correlation`, `polarity` (-1 when the instrumental is inverted: the strongest correlation is
  negative), `clipped_fraction` (samples of the mixture at >= 0.999 full scale);
- `residual_bleed`: the correlation of the residual's and the instrumental's frame energy
  envelopes: a vocal's envelope is its own; drums left in the residual (a wrong gain, a wrong
  instrumental, a misalignment) follow the instrumental's.

`pair_flags(checks)` names what is wrong, with the thresholds of `THRESHOLDS` (docs/stats.md
explains each and why).
"""

from __future__ import annotations

import numpy as np

FRAME_SECONDS = 0.05
THRESHOLDS = {
    "offset_ms": 0.5,                     # |offset| above this: misaligned (22 samples at 44.1 kHz)
    "gain_db": 0.4,                       # |gain| above this: a wrong level (0.5 dB and more, with 0.1 dB margin)
    "residual_db": 6.0,                   # a "vocal" 6 dB above the instrumental: a wrong instrumental
    "instrumental_over_mixture_db": 1.0,  # an instrumental louder than its mixture
    "correlation": 0.5,                   # below: the instrumental is hardly in the mixture
    "clipped_fraction": 1e-3,             # above: the mixture clips
    "residual_bleed": 0.8,                # above: the residual follows the instrumental (not a vocal)
}


def measure_pair(mixture: np.ndarray, instrumental: np.ndarray, rate: int, lag: int) -> dict:
    """Measures of one pair (module docstring); `mixture`, `instrumental` mono float, `rate` Hz,
    `lag` in samples (positive: the instrumental is late)."""
    if lag > 0:
        instrumental = instrumental[lag:]
    elif lag < 0:
        mixture = mixture[-lag:]
    n = min(len(mixture), len(instrumental))
    mixture, instrumental = mixture[:n].astype(np.float64), instrumental[:n].astype(np.float64)
    frame = max(1, int(FRAME_SECONDS * rate))
    frames = n // frame
    if frames < 4:
        return {}
    m = mixture[:frames * frame].reshape(frames, frame)
    i = instrumental[:frames * frame].reshape(frames, frame)
    mi, ii, mm = (m * i).sum(1), (i * i).sum(1), (m * m).sum(1)
    residual = m - i
    rr = (residual * residual).sum(1)
    correlated = mi / np.sqrt(np.maximum(mm * ii, 1e-30))
    loud = ii > 1e-10
    dominant = loud & (correlated >= 0.9)
    if dominant.sum() < 10:
        dominant = loud & (ii >= np.median(ii[loud])) if loud.any() else loud
    gains = mi[dominant] / ii[dominant]
    gain = float(np.median(gains)) if len(gains) else float("nan")
    total_i, total_m, total_r = ii.sum(), mm.sum(), rr.sum()
    envelope_r, envelope_i = np.log10(rr + 1e-12), np.log10(ii + 1e-12)
    bleed = float(np.corrcoef(envelope_r, envelope_i)[0, 1]) if envelope_r.std() > 0 and envelope_i.std() > 0 else 0.0
    full_correlation = float((mixture * instrumental).sum() / np.sqrt(max(total_m * total_i, 1e-30)))
    return {
        "gain_db": round(_db(gain * gain), 3) if gain > 0 else None,
        "residual_db": round(_db(total_r / max(total_i, 1e-30)), 2),
        "instrumental_over_mixture_db": round(_db(total_i / max(total_m, 1e-30)), 2),
        "polarity": -1 if full_correlation < 0 else 1,
        "clipped_fraction": round(float(np.mean(np.abs(mixture) >= 0.999)), 6),
        "residual_bleed": round(bleed, 3),
    }


def pair_flags(checks: dict) -> list[str]:
    """The names of the checks a pair fails (thresholds: `THRESHOLDS`), in a fixed order."""
    flags = []
    offset_ms = abs(checks.get("offset_samples", 0)) / checks.get("offset_sample_rate", 44100) * 1000
    if offset_ms > THRESHOLDS["offset_ms"]:
        flags.append("offset")
    if checks.get("gain_db") is None and "gain_db" in checks or abs(checks.get("gain_db") or 0) > THRESHOLDS["gain_db"]:
        flags.append("gain")
    if checks.get("residual_db", -np.inf) > THRESHOLDS["residual_db"]:
        flags.append("residual_loud")
    if checks.get("instrumental_over_mixture_db", -np.inf) > THRESHOLDS["instrumental_over_mixture_db"]:
        flags.append("instrumental_louder")
    if checks.get("polarity", 1) < 0:
        flags.append("polarity")
    if checks.get("correlation", 1.0) < THRESHOLDS["correlation"] and checks.get("polarity", 1) > 0:
        flags.append("low_correlation")
    if checks.get("clipped_fraction", 0.0) > THRESHOLDS["clipped_fraction"]:
        flags.append("clipping")
    if checks.get("residual_bleed", 0.0) > THRESHOLDS["residual_bleed"]:
        flags.append("residual_bleed")
    if checks.get("rate_mismatch"):
        flags.append("rate_mismatch")
    return flags


def _db(power_ratio: float) -> float:
    return float(10 * np.log10(power_ratio)) if power_ratio > 0 else float("-inf")
