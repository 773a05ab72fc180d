"""SDR as published, always beside its floor and ceiling (docs/separation.md has the formulas).

Two measures, both for the instrumental and the vocals of a track:

- `global_sdr`: the MDX/SDX challenges' SDR, `10 log10((sum s^2 + d) / (sum (s - s_hat)^2 + d))`
  over channels and samples, with their `d = 1e-7`. A silent reference gives a finite number
  (0 dB for a silent estimate, very negative for anything else).
- `bsseval_v4_sdr`: museval's BSSEval v4 SDR (the SiSEC 2018 numbers): the SDR of 1 s frames,
  median over the frames, NaN frames skipped. For the images variant museval runs (v4, one set
  of distortion filters for the whole track), the decomposition only moves energy between the
  three error terms, so a frame's SDR is the energy of the reference over the energy of
  `estimate - reference` in that frame; `tests/test_evaluate.py` checks this against museval.
  museval's conventions are kept: a frame where any reference or estimate is silent (its
  channel sum is zero at every sample) is NaN, an exact frame is +inf, the trailing partial
  frame is dropped. museval refuses a track with an all-silent reference; here every frame of
  such a track is NaN, so its BSSEval SDR is NaN and the medians over tracks skip it.

Bounds on the same tracks and STFT: the floor takes the mixture as the estimate of each stem;
the ceiling is the ideal ratio mask `|I| / (|I| + |V|)` applied to the mixture's STFT.

`validation_sdr` is the trainer's validation metric: the median instrumental global SDR of K
validation songs, separated straight from the store's spectrograms (no decoding).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vr_data.dsp import StftConfig, istft, stft
from vr_data.errors import VRDataError
from vr_model.inference.masking import DEFAULT_OVERLAP

MDX_DELTA = 1e-7          # the MDX/SDX challenges' epsilon, added to both energies
BSSEVAL_WINDOW_SECONDS = 1.0
STEMS = ("instrumental", "vocals")
ESTIMATES = ("model", "floor", "ceiling")
METRICS = ("sdr", "bsseval_sdr")
METRIC_TITLES = {"sdr": "global SDR (MDX)", "bsseval_sdr": "BSSEval v4 SDR"}


# ----------------------------------------------------------------------------- the measures


def global_sdr(reference: np.ndarray, estimate: np.ndarray, delta: float = MDX_DELTA) -> float:
    """The MDX/SDX challenges' SDR in dB of one stem: any equal shapes, e.g. `(channels, samples)`.

    `10 log10((sum s^2 + delta) / (sum (s - s_hat)^2 + delta))`, sums over every channel and
    sample, in float64. Finite for every finite input, a silent reference included.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, estimate {estimate.shape}")
    signal = float(np.sum(np.square(reference))) + delta
    error = float(np.sum(np.square(reference - estimate))) + delta
    return 10.0 * math.log10(signal / error)


def bsseval_v4_frames(references: np.ndarray, estimates: np.ndarray, sample_rate: int,
                      window_seconds: float = BSSEVAL_WINDOW_SECONDS,
                      hop_seconds: float = BSSEVAL_WINDOW_SECONDS) -> np.ndarray:
    """Framewise BSSEval v4 SDR in dB, `(sources, frames)`, as `museval.evaluate` computes it.

    `references`, `estimates`: `(sources, channels, samples)`; estimates longer than the
    references are cut, shorter ones zero-padded (museval's `pad_or_truncate`). Frames are
    `window_seconds` long every `hop_seconds`; a frame where any source of either set is
    silent is NaN for every source.
    """
    references = np.asarray(references, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64)
    if references.ndim != 3 or estimates.ndim != 3 or references.shape[:2] != estimates.shape[:2]:
        raise ValueError(f"references {references.shape} and estimates {estimates.shape} must be "
                         "(sources, channels, samples) with the same sources and channels")
    samples = references.shape[2]
    if estimates.shape[2] >= samples:
        estimates = estimates[:, :, :samples]
    else:
        estimates = np.pad(estimates, ((0, 0), (0, 0), (0, samples - estimates.shape[2])))
    window, hop = int(window_seconds * sample_rate), int(hop_seconds * sample_rate)
    count = (samples - window + hop) // hop if window < samples else 1
    sdr = np.full((references.shape[0], count), np.nan)
    for frame in range(count):
        start, stop = frame * hop, min(frame * hop + window, samples)
        reference, estimate = references[:, :, start:stop], estimates[:, :, start:stop]
        if _any_source_silent(reference) or _any_source_silent(estimate):
            continue
        signal = np.sum(np.square(reference), axis=(1, 2))
        error = np.sum(np.square(estimate - reference), axis=(1, 2))
        with np.errstate(divide="ignore"):
            sdr[:, frame] = np.where(error == 0, np.inf, 10.0 * np.log10(signal / np.where(error == 0, 1, error)))
    return sdr


def _any_source_silent(sources: np.ndarray) -> bool:
    """museval's test: a source whose channel sum is zero at every sample (`(S, C, n)`)."""
    return bool(np.any(np.all(np.sum(sources, axis=1) == 0, axis=1)))


def frames_median(frames: np.ndarray) -> np.ndarray:
    """Median over the last axis, NaN frames skipped (museval's `np.nanmedian`); NaN if all are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "All-NaN slice": the answer is NaN
        return np.nanmedian(frames, axis=-1)


def bsseval_v4_sdr(references: np.ndarray, estimates: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-source BSSEval v4 SDR `(sources,)`: the median over 1 s frames, NaN frames skipped."""
    return frames_median(bsseval_v4_frames(references, estimates, sample_rate))


def ideal_ratio_mask(mixture: np.ndarray, instrumental: np.ndarray, config: StftConfig,
                     power: float = 1.0) -> np.ndarray:
    """The ceiling's instrumental: `|I|^p / (|I|^p + |V|^p)` x the mixture's STFT, inverted.

    `mixture`, `instrumental`: float `(channels, samples)` at `config.sample_rate`; the vocal
    spectrogram is `V = STFT(mixture) - STFT(instrumental)`. `power=1` is the magnitude ratio
    (sigsep's IRM1), the kind of mask the model outputs. Bins where both are zero keep the
    mixture (which is zero there). Returns float32 `(channels, samples)`.
    """
    mixture_spec = stft(mixture, config)
    instrumental_spec = stft(instrumental, config)
    mask = ratio_mask(instrumental_spec, mixture_spec - instrumental_spec, power)
    return istft(mask * mixture_spec, config, length=mixture.shape[-1])


def ratio_mask(instrumental_spec: np.ndarray, vocal_spec: np.ndarray, power: float = 1.0) -> np.ndarray:
    instrumental_level = np.abs(instrumental_spec) ** power
    total = instrumental_level + np.abs(vocal_spec) ** power
    return np.divide(instrumental_level, total, out=np.ones_like(total), where=total > 0).astype(np.float32)


# ----------------------------------------------------------------------------- scores of a track


@dataclass(frozen=True)
class Scores:
    """The SDRs of one estimate of one track, dB (NaN where undefined, see the module doc)."""

    instrumental_sdr: float
    vocals_sdr: float
    instrumental_bsseval_sdr: float
    vocals_bsseval_sdr: float

    def get(self, stem: str, metric: str) -> float:
        return getattr(self, f"{stem}_{metric}")


def score(mixture: np.ndarray, instrumental: np.ndarray, vocals: np.ndarray, instrumental_estimate: np.ndarray,
          vocals_estimate: np.ndarray, sample_rate: int) -> Scores:
    """Both measures for both stems; every array float `(channels, samples)` of one length."""
    references = np.stack([instrumental, vocals])
    estimates = np.stack([instrumental_estimate, vocals_estimate])
    bsseval = bsseval_v4_sdr(references, estimates, sample_rate)
    return Scores(
        instrumental_sdr=global_sdr(instrumental, instrumental_estimate),
        vocals_sdr=global_sdr(vocals, vocals_estimate),
        instrumental_bsseval_sdr=float(bsseval[0]),
        vocals_bsseval_sdr=float(bsseval[1]),
    )


@dataclass(frozen=True)
class TrackResult:
    """A track's scores: the model's, the floor's (mixture as estimate) and the ceiling's (IRM)."""

    id: str
    seconds: float
    model: Scores
    floor: Scores
    ceiling: Scores

    def to_json(self) -> dict:
        return {"id": self.id, "seconds": round(self.seconds, 3),
                **{name: _finite_or_none(asdict(getattr(self, name))) for name in ESTIMATES}}


def score_track(track_id: str, mixture: np.ndarray, instrumental: np.ndarray, vocals: np.ndarray,
                instrumental_estimate: np.ndarray, config: StftConfig) -> TrackResult:
    """Model, floor and ceiling scores of one track at `config.sample_rate`.

    The model's vocals are `mixture - instrumental_estimate` (as `vrtrain separate` writes them).
    """
    rate = config.sample_rate
    ceiling_instrumental = ideal_ratio_mask(mixture, instrumental, config)
    return TrackResult(
        id=track_id,
        seconds=mixture.shape[-1] / rate,
        model=score(mixture, instrumental, vocals, instrumental_estimate, mixture - instrumental_estimate, rate),
        floor=score(mixture, instrumental, vocals, mixture, mixture, rate),
        ceiling=score(mixture, instrumental, vocals, ceiling_instrumental, mixture - ceiling_instrumental, rate),
    )


@dataclass
class EvalReport:
    """Per-track results and their median and mean over tracks (NaNs skipped)."""

    results: list[TrackResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)   # (track id, reason)
    # --- issue 24: input-blind oracles (vr_model.inference.oracles.OracleReport), or None
    oracles: object | None = None

    def aggregate(self, statistic: str) -> dict[str, dict[str, dict[str, float]]]:
        """`{estimate: {stem: {metric: value}}}` for `statistic` in ("median", "mean")."""
        function = {"median": np.nanmedian, "mean": np.nanmean}[statistic]
        out: dict = {}
        for estimate in ESTIMATES:
            out[estimate] = {}
            for stem in STEMS:
                out[estimate][stem] = {}
                for metric in METRICS:
                    values = np.array([getattr(r, estimate).get(stem, metric) for r in self.results], dtype=float)
                    finite = values[~np.isnan(values)]
                    out[estimate][stem][metric] = float(function(finite)) if finite.size else math.nan
        return out

    def to_json(self) -> dict:
        return {
            "definitions": {
                "sdr": f"MDX/SDX global SDR, 10 log10((sum s^2 + {MDX_DELTA:g}) / (sum (s - s_hat)^2 + {MDX_DELTA:g}))",
                "bsseval_sdr": "museval BSSEval v4 SDR, median over 1 s frames, NaN frames skipped",
                "floor": "the mixture as the estimate of each stem",
                "ceiling": "ideal ratio mask |I| / (|I| + |V|) on the model's STFT",
                "vocals": "mixture - instrumental estimate",
            },
            "tracks": [result.to_json() for result in self.results],
            "median": _finite_or_none(self.aggregate("median")),
            "mean": _finite_or_none(self.aggregate("mean")),
            "failures": [{"id": track_id, "reason": reason} for track_id, reason in self.failures],
            "oracles": self.oracles.to_json() if self.oracles is not None else None,   # issue 24
        }


def _finite_or_none(value):
    """JSON has no NaN: undefined scores become null (inf too, which only an exact copy gives)."""
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- manifests


def song_name(track_id: str) -> str:
    """The readable part of a manifest id (`vr_data.catalog.manifest.item_id`: a slug of the
    song's path and 8 hex digits of its hash): `artist-song-1a2b3c4d` -> `artist-song`."""
    slug, _, digest = track_id.rpartition("-")
    return slug if slug and len(digest) == 8 and all(c in "0123456789abcdef" for c in digest) else track_id


@dataclass(frozen=True)
class EvalTrack:
    """A pair of a manifest: its id and where to find its sources."""

    id: str
    manifest: object   # vr_data.catalog.Manifest
    item: object       # vr_data.catalog.Item


def eval_tracks(manifest, split: str | None = None, limit: int | None = None) -> list[EvalTrack]:
    """The pairs (or MUSDB tracks) of a manifest, of `split` if given, sorted by id, first `limit`."""
    if manifest.role != "pair":
        raise VRDataError(manifest.source_path, f"eval needs a pair manifest (mixtures with instrumentals), "
                                                f"not a {manifest.role!r} one")
    items = sorted((item for item in manifest.items if split is None or item.split == split), key=lambda i: i.id)
    if not items:
        splits = sorted({item.split for item in manifest.items})
        raise VRDataError(manifest.source_path, f"no pairs in split {split!r} (splits here: {', '.join(splits)})")
    return [EvalTrack(item.id, manifest, item) for item in items[:limit]]


def load_references(track: EvalTrack, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixture, instrumental and vocals, float32 `(2, samples)` at `sample_rate`, one length.

    The vocals are the item's vocal stem where it has one (MUSDB), else mixture - instrumental.
    """
    from vr_data.catalog.sources import load_item_source

    mixture = load_item_source(track.manifest, track.item, "mixture", sample_rate)
    instrumental = load_item_source(track.manifest, track.item, "instrumental", sample_rate)
    vocals = None
    if "vocal" in track.item.sources:
        vocals = load_item_source(track.manifest, track.item, "vocal", sample_rate)
    samples = min(mixture.shape[1], instrumental.shape[1], vocals.shape[1] if vocals is not None else mixture.shape[1])
    mixture, instrumental = mixture[:, :samples], instrumental[:, :samples]
    vocals = vocals[:, :samples] if vocals is not None else mixture - instrumental
    return mixture, instrumental, vocals


def evaluate_tracks(separator, tracks: Iterable[EvalTrack],
                    on_track: Callable[[EvalTrack, TrackResult | None, str | None], None] | None = None,
                    oracles: bool = True) -> EvalReport:
    """Separate and score every track; a track that fails to decode is recorded and skipped.
    With `oracles`, `report.oracles` also scores the input-blind oracles on the scored tracks
    (`vr_model.inference.oracles`: a second pass decodes each track again)."""
    from vr_model.inference.oracles import OracleFit   # --- issue 24

    report = EvalReport()
    config = separator.stft
    fit = OracleFit(config) if oracles else None       # --- issue 24
    for track in tracks:
        try:
            mixture, instrumental, vocals = load_references(track, config.sample_rate)
            estimate = separator.separate_audio(mixture, config.sample_rate)
            result = score_track(track.id, mixture, instrumental, vocals, estimate, config)
        except VRDataError as error:
            report.failures.append((track.id, str(error)))
            if on_track is not None:
                on_track(track, None, str(error))
            continue
        report.results.append(result)
        if fit is not None:                            # --- issue 24
            fit.add(track, track.id, mixture, instrumental, vocals)
        if on_track is not None:
            on_track(track, result, None)
    if fit is not None:                                # --- issue 24
        report.oracles = fit.finish(lambda track: load_references(track, config.sample_rate))
    return report


# ----------------------------------------------------------------------------- figures


def plot_track(result: TrackResult, path: str | Path) -> Path:
    """A bar chart of the model's SDRs per stem and measure, with the floor and the ceiling
    drawn on each bar; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vr_data.io import atomic_write_bytes

    labels, model, floor, ceiling = [], [], [], []
    for stem in STEMS:
        for metric in METRICS:
            labels.append(f"{stem}\n{METRIC_TITLES[metric]}")
            model.append(result.model.get(stem, metric))
            floor.append(result.floor.get(stem, metric))
            ceiling.append(result.ceiling.get(stem, metric))
    positions = np.arange(len(labels))
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    axes.bar(positions, np.nan_to_num(model, nan=0.0), width=0.6, color="#4878a8", label="model")
    axes.hlines(floor, positions - 0.4, positions + 0.4, colors="#c44e52", linewidth=2.5, label="floor (mixture)")
    axes.hlines(ceiling, positions - 0.4, positions + 0.4, colors="#55a868", linewidth=2.5, label="ceiling (IRM)")
    for x, value in zip(positions, model):
        below = not math.isnan(value) and value < 0
        axes.annotate("n/a" if math.isnan(value) else f"{value:.2f}", (x, 0 if math.isnan(value) else value),
                      xytext=(0, -3 if below else 3), textcoords="offset points",
                      ha="center", va="top" if below else "bottom", fontsize=8)
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_xticks(positions, labels, fontsize=8)
    axes.set_ylabel("dB")
    axes.set_title(f"{result.id} ({result.seconds:.1f} s)", fontsize=10)
    axes.margins(y=0.12)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ----------------------------------------------------------------------------- trainer validation


@dataclass(frozen=True)
class ValidationSdr:
    """Median global instrumental SDR of the model over K validation songs, with its bounds."""

    sdr: float
    floor: float
    ceiling: float
    tracks: tuple[str, ...]
    per_track: tuple[float, ...]


def validation_songs(store, k: int, split: str = "valid") -> list:
    """The first `k` pair tracks of `split` by id: the same songs at every validation."""
    tracks = sorted(store.tracks_by_role("pair", split), key=lambda track: track.id)
    return tracks[:k]


def validation_sdr(model, normalisation, store, k: int, *, split: str = "valid", crop_frames: int | None = None,
                   overlap: float = DEFAULT_OVERLAP, batch_size: int = 4) -> ValidationSdr | None:
    """The trainer's validation metric, from the store's spectrograms (no audio decoding).

    For each of `validation_songs(store, k, split)`: the model masks the stored mixture
    spectrogram crop by crop with `normalisation` (as `vrtrain separate` does), and the global
    SDR compares the inverse STFTs of the estimate and of the stored instrumental. Floor and
    ceiling are computed on the same spectrograms. `model` is a `FramePrimerUNet` (run where
    its parameters are; its train/eval mode is restored). None when the store has no such songs.
    """
    from vr_model.inference.masking import CropMasker, TorchMaskNetwork

    songs = validation_songs(store, k, split)
    if not songs:
        return None
    config = store.config
    was_training = model.training
    network = TorchMaskNetwork(model)
    if config.bins != network.bins:
        raise VRDataError(store.path, f"the store's STFT has {config.bins} bins, the model takes {network.bins}")
    model_sdr, floor_sdr, ceiling_sdr = [], [], []
    try:
        for track in songs:
            mixture_spec = np.ascontiguousarray(store.read_spectrogram(track, "mixture"))
            instrumental_spec = np.ascontiguousarray(store.read_spectrogram(track, "instrumental"))
            samples = int(round(track.duration * config.sample_rate))
            masker = CropMasker(network, normalisation, crop_frames, overlap, batch_size)
            estimate_spec = np.concatenate([masker.push(mixture_spec), masker.finish()], axis=-1)
            mask = ratio_mask(instrumental_spec, mixture_spec - instrumental_spec)
            reference = istft(instrumental_spec, config, length=samples)
            model_sdr.append(global_sdr(reference, istft(estimate_spec, config, length=samples)))
            floor_sdr.append(global_sdr(reference, istft(mixture_spec, config, length=samples)))
            ceiling_sdr.append(global_sdr(reference, istft(mask * mixture_spec, config, length=samples)))
    finally:
        model.train(was_training)
    return ValidationSdr(sdr=float(np.median(model_sdr)), floor=float(np.median(floor_sdr)),
                         ceiling=float(np.median(ceiling_sdr)), tracks=tuple(t.id for t in songs),
                         per_track=tuple(model_sdr))


def valid_sdr(model, store_path, *, songs: int, normalisation, device=None) -> dict | None:
    """The trainer's SDR hook (`vr_model.train.validation`, `validation.sdr_songs`): the fields
    `valid_sdr`, `valid_sdr_floor` and `valid_sdr_ceiling` (dB, medians over up to `songs` valid
    songs) and `valid_sdr_songs` (how many), logged beside `valid_loss`; None when the store has
    no valid pairs. `model` already sits on `device`."""
    from vr_data.store import open_store

    result = validation_sdr(model, normalisation, open_store(store_path), songs)
    if result is None:
        return None
    return {"valid_sdr": result.sdr, "valid_sdr_floor": result.floor, "valid_sdr_ceiling": result.ceiling,
            "valid_sdr_songs": len(result.tracks)}
