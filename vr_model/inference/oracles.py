"""Input-blind oracles: what an estimate that never looks at the mixture's content can score.

A model must beat these to have learned anything more than a volume knob or an equaliser.
Both are *oracles*: they are fitted on the very tracks they are scored on (with the true
instrumentals), so they are upper bounds for their kind of estimate, not baselines a user
could run.

- **best single gain** (`gain`): per track, the instrumental estimate `g x mixture` with the
  least-squares gain `g = <m, i> / <m, m>` (one real number per track, fitted on that track):
  the best a volume knob can do.
- **best fixed per-bin mask** (`bin_mask`): one real mask per STFT frequency bin, the same for
  every frame, channel and evaluated track, fitted by least squares on the STFTs of all the
  evaluated tracks together (`M_f = clip(sum Re(I conj X) / sum |X|^2, 0, 1)`, sums over
  tracks, channels and frames): the best fixed equaliser, what a model that learned only
  where vocals sit in frequency would do.

Scores are the same measures as `vr_model.inference.evaluate.score` (global MDX SDR and BSSEval
v4 for both stems; vocals = mixture - instrumental estimate).

The bin mask needs every track before any can be scored, so `OracleFit` takes two passes: `add`
each track as it is evaluated (the gain oracle is scored there and the per-bin sums grow), then
`finish(load)` reloads each track to apply the fitted mask. Memory stays at one track.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field

import numpy as np

from vr_data.dsp import StftConfig, istft, stft

ORACLES = ("gain", "bin_mask")
ORACLE_TITLES = {
    "gain": "best single gain (per track, fitted on it)",
    "bin_mask": "best fixed per-bin mask (fitted on these tracks)",
}


def best_gain(mixture: np.ndarray, instrumental: np.ndarray) -> float:
    """The least-squares gain `g` minimising `||instrumental - g x mixture||^2` (float64 sums
    over every channel and sample); 1.0 for a silent mixture."""
    mixture = np.asarray(mixture, dtype=np.float64)
    energy = float(np.vdot(mixture, mixture))
    if energy <= 0.0:
        return 1.0
    return float(np.vdot(mixture, np.asarray(instrumental, dtype=np.float64))) / energy


@dataclass
class BinMaskFit:
    """Least-squares sums for one real mask per frequency bin: `numerator[f] = sum Re(I conj X)`
    and `denominator[f] = sum |X|^2` over channels and frames of every added track."""

    numerator: np.ndarray | None = None
    denominator: np.ndarray | None = None

    def add(self, mixture_spec: np.ndarray, instrumental_spec: np.ndarray) -> None:
        """Add one track's complex STFTs `(channels, bins, frames)` (same shapes)."""
        numerator = np.sum((instrumental_spec * np.conj(mixture_spec)).real, axis=(0, 2), dtype=np.float64)
        denominator = np.sum(np.abs(mixture_spec) ** 2, axis=(0, 2), dtype=np.float64)
        if self.numerator is None:
            self.numerator, self.denominator = numerator, denominator
        else:
            self.numerator = self.numerator + numerator
            self.denominator = self.denominator + denominator

    def mask(self) -> np.ndarray:
        """float32 `(bins,)` in [0, 1]; 1 (pass) on bins where every mixture was silent."""
        if self.numerator is None:
            raise ValueError("no track was added to the per-bin mask fit")
        ratio = np.divide(self.numerator, self.denominator, out=np.ones_like(self.numerator),
                          where=self.denominator > 0)
        return np.clip(ratio, 0.0, 1.0).astype(np.float32)


def apply_bin_mask(mixture: np.ndarray, mask: np.ndarray, config: StftConfig) -> np.ndarray:
    """The instrumental estimate `istft(mask[f] x STFT(mixture))`, float32 `(channels, samples)`."""
    spec = stft(mixture, config)
    return istft(mask[None, :, None] * spec, config, length=mixture.shape[-1])


@dataclass
class OracleReport:
    """Each oracle's scores per track (`{oracle: {track id: Scores}}`) and the fitted mask."""

    scores: dict = field(default_factory=lambda: {name: {} for name in ORACLES})
    gains: dict = field(default_factory=dict)            # track id -> fitted gain
    bin_mask: np.ndarray | None = None                   # (bins,)

    def aggregate(self, statistic: str) -> dict[str, dict[str, dict[str, float]]]:
        """`{oracle: {stem: {metric: value}}}`, median or mean over tracks, NaNs skipped."""
        from vr_model.inference.evaluate import METRICS, STEMS

        function = {"median": np.nanmedian, "mean": np.nanmean}[statistic]
        out: dict = {}
        for name in ORACLES:
            out[name] = {}
            for stem in STEMS:
                out[name][stem] = {}
                for metric in METRICS:
                    values = np.array([s.get(stem, metric) for s in self.scores[name].values()], dtype=float)
                    finite = values[~np.isnan(values)]
                    out[name][stem][metric] = float(function(finite)) if finite.size else math.nan
        return out

    def median_instrumental_sdr(self, name: str) -> float:
        return self.aggregate("median")[name]["instrumental"]["sdr"]

    def to_json(self) -> dict:
        from vr_model.inference.evaluate import _finite_or_none

        return _finite_or_none({
            "definitions": dict(ORACLE_TITLES),
            "tracks": {name: {track: asdict(s) for track, s in self.scores[name].items()} for name in ORACLES},
            "gains": self.gains,
            "median": self.aggregate("median"),
            "mean": self.aggregate("mean"),
        })


class OracleFit:
    """Two passes over the evaluated tracks; see the module doc.

    `add(key, track_id, mixture, instrumental, vocals)` with float `(channels, samples)` arrays
    at `config.sample_rate`; `finish(load)` calls `load(key)` -> `(mixture, instrumental, vocals)`
    once per added track and returns the `OracleReport`.
    """

    def __init__(self, config: StftConfig):
        self.config = config
        self.report = OracleReport()
        self._fit = BinMaskFit()
        self._added: list[tuple[Hashable, str]] = []

    def add(self, key: Hashable, track_id: str, mixture: np.ndarray, instrumental: np.ndarray,
            vocals: np.ndarray) -> None:
        from vr_model.inference.evaluate import score

        gain = best_gain(mixture, instrumental)
        estimate = (gain * np.asarray(mixture, dtype=np.float64)).astype(np.float32)
        self.report.gains[track_id] = gain
        self.report.scores["gain"][track_id] = score(mixture, instrumental, vocals, estimate, mixture - estimate,
                                                      self.config.sample_rate)
        self._fit.add(stft(mixture, self.config), stft(instrumental, self.config))
        self._added.append((key, track_id))

    def finish(self, load: Callable[[Hashable], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> OracleReport:
        from vr_model.inference.evaluate import score

        if not self._added:
            return self.report
        mask = self._fit.mask()
        self.report.bin_mask = mask
        for key, track_id in self._added:
            mixture, instrumental, vocals = load(key)
            estimate = apply_bin_mask(mixture, mask, self.config)
            self.report.scores["bin_mask"][track_id] = score(mixture, instrumental, vocals, estimate,
                                                              mixture - estimate, self.config.sample_rate)
        return self.report


def oracle_report(tracks: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], config: StftConfig) -> OracleReport:
    """Both oracles on tracks held in memory: `(id, mixture, instrumental, vocals)` each."""
    fit = OracleFit(config)
    for index, (track_id, mixture, instrumental, vocals) in enumerate(tracks):
        fit.add(index, track_id, mixture, instrumental, vocals)
    return fit.finish(lambda index: tracks[index][1:])
