"""Content statistics of manifest items: levels of every source, vocal energy of pairs, spectra.

`measure_item` decodes one item's sources (at `StatsSettings.sample_rate`) and measures each:
integrated loudness (BS.1770-4, LUFS), peak (dBFS), clipped samples, silence fraction, and the
per-bin moments of its log-magnitude STFT; for a pair also the energy of `mixture -
instrumental` (the vocal) relative to the instrumental, in dB. It is a pure function of its task,
run on any executor; `ContentSummary` merges the results per `role/source` exactly.
Memory per task: the decoded sources of one item plus the STFT of `chunk_frames` frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vr_data.audio import loudness
from vr_data.dsp.stft import block_stft
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import Item, Manifest
from vr_data.catalog.sources import load_item_source
from vr_data.stats.running import Histogram, RunningMoments
import vr_data.stats.settings as limits
from vr_data.stats.settings import StatsSettings
from vr_data.stats.spectral import log_magnitude_moments


@dataclass(frozen=True)
class ItemTask:
    """What a worker needs to measure one item: the library root, names and the item record."""

    root: Path
    library: str
    role: str
    item: Item
    settings: StatsSettings


@dataclass
class SourceLevels:
    """Measures of one source of one item; levels in LUFS/dBFS (`-inf` for silence)."""

    source: str
    seconds: float
    loudness_lufs: float
    peak_dbfs: float
    silence_fraction: float
    clipped_samples: int
    log_magnitude: RunningMoments  # per bin, shape (bins,)


@dataclass
class ItemContent:
    """The result of `measure_item`; `error` is set (and nothing measured) when decoding failed."""

    library: str
    role: str
    id: str
    split: str
    sources: list[SourceLevels] = field(default_factory=list)
    vocal_energy_db: float | None = None
    error: str | None = None


def item_tasks(manifest: Manifest, settings: StatsSettings) -> list[ItemTask]:
    return [ItemTask(manifest.root, manifest.library, manifest.role, item, settings) for item in manifest.items]


def measure_item(task: ItemTask) -> ItemContent:
    """Decode and measure every source of `task.item` (see the module docstring)."""
    item, settings = task.item, task.settings
    result = ItemContent(task.library, task.role, item.id, item.split)
    # Only the root is needed to resolve the item's files; no need to ship the whole manifest.
    manifest = Manifest(library=task.library, role=task.role, root=Path(task.root), items=[])
    decoded: dict[str, np.ndarray] = {}
    try:
        for source in item.sources:
            decoded[source] = load_item_source(manifest, item, source, settings.sample_rate)
    except VRDataError as error:
        result.error = str(error)
        return result
    for source, audio in decoded.items():
        result.sources.append(source_levels(source, audio, settings))
    if "mixture" in decoded and "instrumental" in decoded:
        result.vocal_energy_db = vocal_energy_db(decoded["mixture"], decoded["instrumental"])
    return result


def source_levels(source: str, audio: np.ndarray, settings: StatsSettings) -> SourceLevels:
    """Measures of float32 `(channels, samples)` audio at `settings.sample_rate`."""
    moments = RunningMoments((settings.stft.bins,))
    frames = settings.stft.frames_for(audio.shape[1])
    for first in range(0, frames, settings.chunk_frames):  # block by block: bounded memory for long tracks
        last = min(first + settings.chunk_frames, frames)
        spec = block_stft(audio, settings.stft, first, last)  # complex64 (channels, frames, bins)
        log_magnitude_moments(np.abs(spec).reshape(-1, settings.stft.bins), settings.log_eps, moments)
    return SourceLevels(
        source=source,
        seconds=audio.shape[1] / settings.sample_rate,
        loudness_lufs=loudness.integrated_loudness(audio, settings.sample_rate),
        peak_dbfs=loudness.peak_dbfs(audio),
        silence_fraction=loudness.silence_fraction(audio, settings.sample_rate, settings.silence_dbfs,
                                                   settings.silence_window_seconds),
        clipped_samples=loudness.clipped_samples(audio, settings.clip_level),
        log_magnitude=moments,
    )


def vocal_energy_db(mixture: np.ndarray, instrumental: np.ndarray) -> float | None:
    """Energy of `mixture - instrumental` relative to the instrumental's, dB, over their common
    length and both channels; `-inf` if they are identical, None if the instrumental is silent."""
    length = min(mixture.shape[1], instrumental.shape[1])
    vocal_energy = instrumental_energy = 0.0
    for start in range(0, length, loudness.BLOCK_SAMPLES):  # piece by piece: bounded float64 memory
        stop = min(start + loudness.BLOCK_SAMPLES, length)
        instrumental_piece = instrumental[:, start:stop].astype(np.float64)
        vocal_energy += float(np.sum(np.square(mixture[:, start:stop] - instrumental_piece)))
        instrumental_energy += float(np.sum(np.square(instrumental_piece)))
    if instrumental_energy == 0.0:
        return None
    return 10.0 * math.log10(vocal_energy / instrumental_energy) if vocal_energy > 0 else float("-inf")


@dataclass
class SourceSummary:
    """Merged measures of one `role/source` over items."""

    items: int = 0
    seconds: float = 0.0
    loudness: RunningMoments = field(default_factory=RunningMoments)  # finite values only
    loudness_histogram: Histogram = field(default_factory=limits.loudness_histogram)
    gated_items: int = 0  # no integrated loudness: shorter than a block or silent
    peak: RunningMoments = field(default_factory=RunningMoments)
    peak_histogram: Histogram = field(default_factory=limits.peak_histogram)
    silence: RunningMoments = field(default_factory=RunningMoments)
    silence_histogram: Histogram = field(default_factory=limits.fraction_histogram)
    silent_seconds: float = 0.0
    clipped_samples: int = 0
    items_with_clipping: int = 0
    log_magnitude: RunningMoments | None = None

    def add(self, levels: SourceLevels) -> None:
        self.items += 1
        self.seconds += levels.seconds
        if math.isfinite(levels.loudness_lufs):
            self.loudness.update([levels.loudness_lufs])
            self.loudness_histogram.update([levels.loudness_lufs])
        else:
            self.gated_items += 1
        if math.isfinite(levels.peak_dbfs):
            self.peak.update([levels.peak_dbfs])
        self.peak_histogram.update([levels.peak_dbfs])
        self.silence.update([levels.silence_fraction])
        self.silence_histogram.update([levels.silence_fraction])
        self.silent_seconds += levels.silence_fraction * levels.seconds
        self.clipped_samples += levels.clipped_samples
        self.items_with_clipping += int(levels.clipped_samples > 0)
        if self.log_magnitude is None:
            self.log_magnitude = RunningMoments(levels.log_magnitude.shape)
        self.log_magnitude.merge(levels.log_magnitude)

    def to_json(self) -> dict:
        return {
            "items": self.items,
            "seconds": self.seconds,
            "loudness_lufs": {**self.loudness.summary(), "gated_items": self.gated_items,
                              "histogram": self.loudness_histogram.to_json()},
            "peak_dbfs": {**self.peak.summary(), "histogram": self.peak_histogram.to_json()},
            "silence_fraction": {**self.silence.summary(), "histogram": self.silence_histogram.to_json(),
                                 "silent_seconds": self.silent_seconds,
                                 "of_duration": self.silent_seconds / self.seconds if self.seconds else None},
            "clipping": {"samples": self.clipped_samples, "items": self.items_with_clipping},
        }


@dataclass
class ContentSummary:
    """Per `role/source` summaries, pair vocal energies, per-item records and decoding errors."""

    sources: dict[str, SourceSummary] = field(default_factory=dict)
    vocal_energy: RunningMoments = field(default_factory=RunningMoments)
    vocal_energy_histogram: Histogram = field(default_factory=limits.vocal_energy_histogram)
    items: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def add(self, content: ItemContent) -> None:
        if content.error is not None:
            self.errors.append({"library": content.library, "role": content.role, "id": content.id,
                                "error": content.error})
            return
        record = {"library": content.library, "role": content.role, "id": content.id, "split": content.split,
                  "sources": {}}
        for levels in content.sources:
            self.sources.setdefault(f"{content.role}/{levels.source}", SourceSummary()).add(levels)
            record["sources"][levels.source] = {
                "seconds": levels.seconds, "loudness_lufs": levels.loudness_lufs, "peak_dbfs": levels.peak_dbfs,
                "silence_fraction": levels.silence_fraction, "clipped_samples": levels.clipped_samples,
            }
        if content.role == "pair":
            record["vocal_energy_db"] = content.vocal_energy_db
            if content.vocal_energy_db is not None:
                if math.isfinite(content.vocal_energy_db):
                    self.vocal_energy.update([content.vocal_energy_db])
                self.vocal_energy_histogram.update([content.vocal_energy_db])
        self.items.append(record)

    def to_json(self) -> dict:
        return {
            "sources": {key: summary.to_json() for key, summary in sorted(self.sources.items())},
            "log_magnitude": {key: log_magnitude_json(summary.log_magnitude)
                              for key, summary in sorted(self.sources.items()) if summary.log_magnitude is not None},
            "pairs": {"vocal_energy_db": {**self.vocal_energy.summary(),
                                          "histogram": self.vocal_energy_histogram.to_json()}},
            "items": sorted(self.items, key=lambda r: (r["role"], r["library"], r["id"])),
            "errors": sorted(self.errors, key=lambda r: (r["library"], r["id"])),
        }


def log_magnitude_json(moments: RunningMoments) -> dict:
    """Per-bin mean and std (population) of the log magnitude, and how many rows they summarise."""
    return {"rows": moments.count, "mean": moments.mean.tolist(), "std": moments.std.tolist()}
