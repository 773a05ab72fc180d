"""Statistics of a built spectrogram store, streamed from its arrays in bounded memory.

Totals come from `tracks.jsonl` and `rejects.jsonl`. Content statistics are spectral only (the
store keeps spectrograms, not audio): per `role/source`, the per-bin moments of the log
magnitude `ln(|X| + eps)` (the input normalisation), each frame's RMS level from its power
spectrum (Parseval, window-weighted), the fraction of frames below the silence threshold, and
each track's RMS level over all its frames. Loudness (LUFS), peaks and clipping need the audio
and are manifest statistics only.

One task per (track, source) reads `chunk_frames` frames at a time (float16) and works on slices
of it, so memory is bounded by one chunk whatever the track or store size; tasks open the store
once per process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vr_data.catalog.manifest import SPLITS
from vr_data.stats.running import Histogram, RunningMoments
import vr_data.stats.settings as limits
from vr_data.stats.content import log_magnitude_json
from vr_data.stats.settings import StatsSettings
from vr_data.stats.spectral import SLICE_ROWS, frame_mean_square, level_db, log_magnitude_moments
from vr_data.stats.totals import amount
from vr_data.store import Store, open_store, remote
from vr_data.store.format import STORE_JSON

SLICE_FRAMES = SLICE_ROWS // 2  # frames of a stereo slice: as many rows as one float64 pass takes


@dataclass(frozen=True)
class TrackStatsTask:
    """One source of one track of the store at `store` (a path: the store is reopened per process)."""

    store: str
    track: str
    source: str
    settings: StatsSettings


@dataclass
class TrackSpectral:
    """Streamed measures of one source of one track."""

    id: str
    role: str
    library: str
    split: str
    source: str
    frames: int
    silent_frames: int
    mean_square_sum: float  # sum over frames of the frame mean square (full-scale units)
    frame_levels: Histogram
    log_magnitude: RunningMoments

    @property
    def rms_dbfs(self) -> float:
        """RMS level of the whole track from its frames, dBFS."""
        return float(level_db(self.mean_square_sum / self.frames)) if self.frames else float("-inf")


@functools.lru_cache(maxsize=4)
def _opened(path: str, stamp: int) -> Store:
    """One Store per process and store version (`stamp`: store.json's mtime), reused by its tasks."""
    return open_store(path)


def open_cached(path: str | Path) -> Store:
    path = str(path)
    if remote.is_remote(path):  # an object's version: its ETag-derived content hash would cost a read
        return _opened(path, hash(remote.read_bytes(remote.location(path) / STORE_JSON)))
    return _opened(path, os.stat(Path(path) / STORE_JSON).st_mtime_ns)


def track_tasks(store: Store, settings: StatsSettings) -> list[TrackStatsTask]:
    return [TrackStatsTask(str(store.path), track.id, source, settings) for track in store.tracks for source in track.sources]


def measure_track(task: TrackStatsTask) -> TrackSpectral:
    """Stream one source of one track in chunks of `settings.chunk_frames` frames."""
    store = open_cached(task.store)
    track = store.track(task.track)
    settings = task.settings
    moments = RunningMoments((store.bins,))
    frame_levels = limits.frame_level_histogram()
    silent_frames, mean_square_sum = 0, 0.0
    threshold = 10.0 ** (settings.silence_dbfs / 10.0)
    for start in range(0, track.frames, settings.chunk_frames):
        stop = min(start + settings.chunk_frames, track.frames)
        stored = store.read_frames(track, task.source, start, stop)  # float16 (frames, 2, re/im, bins)
        # One large read for I/O, float32/float64 work on slices of it to keep temporaries small.
        for first in range(0, stored.shape[0], SLICE_FRAMES):
            piece = stored[first : first + SLICE_FRAMES].astype(np.float32)
            power = np.square(piece[:, :, 0]) + np.square(piece[:, :, 1])  # (frames, channels, bins)
            log_magnitude_moments(np.sqrt(power).reshape(-1, store.bins), settings.log_eps, moments)
            mean_square = frame_mean_square(power, store.config)  # (frames,)
            frame_levels.update(level_db(mean_square))
            silent_frames += int(np.count_nonzero(mean_square < threshold))
            mean_square_sum += float(mean_square.sum())
    return TrackSpectral(track.id, track.role, track.library, track.split, task.source, track.frames, silent_frames,
                         mean_square_sum, frame_levels, moments)


@dataclass
class StoreSourceSummary:
    """Merged spectral measures of one `role/source` of a store."""

    tracks: int = 0
    frames: int = 0
    silent_frames: int = 0
    frame_levels: Histogram = field(default_factory=limits.frame_level_histogram)
    track_levels: RunningMoments = field(default_factory=RunningMoments)  # finite track RMS levels, dBFS
    track_level_histogram: Histogram = field(default_factory=limits.loudness_histogram)
    track_silence: RunningMoments = field(default_factory=RunningMoments)
    log_magnitude: RunningMoments | None = None

    def add(self, result: TrackSpectral) -> None:
        self.tracks += 1
        self.frames += result.frames
        self.silent_frames += result.silent_frames
        self.frame_levels.merge(result.frame_levels)
        level = result.rms_dbfs
        if np.isfinite(level):
            self.track_levels.update([level])
        self.track_level_histogram.update([level])
        if result.frames:
            self.track_silence.update([result.silent_frames / result.frames])
        if self.log_magnitude is None:
            self.log_magnitude = RunningMoments(result.log_magnitude.shape)
        self.log_magnitude.merge(result.log_magnitude)

    def to_json(self) -> dict:
        return {
            "tracks": self.tracks, "frames": self.frames,
            "silence_fraction": {"frames": self.silent_frames,
                                 "of_frames": self.silent_frames / self.frames if self.frames else None,
                                 "per_track": self.track_silence.summary()},
            "frame_level_dbfs": {"histogram": self.frame_levels.to_json()},
            "track_rms_dbfs": {**self.track_levels.summary(), "histogram": self.track_level_histogram.to_json()},
        }


@dataclass
class StoreContent:
    """Per `role/source` summaries of a store and one record per track and source."""

    sources: dict[str, StoreSourceSummary] = field(default_factory=dict)
    tracks: list[dict] = field(default_factory=list)

    def add(self, result: TrackSpectral) -> None:
        self.sources.setdefault(f"{result.role}/{result.source}", StoreSourceSummary()).add(result)
        self.tracks.append({"id": result.id, "role": result.role, "library": result.library, "split": result.split,
                            "source": result.source, "frames": result.frames,
                            "silence_fraction": result.silent_frames / result.frames if result.frames else None,
                            "rms_dbfs": result.rms_dbfs})

    def to_json(self) -> dict:
        return {
            "sources": {key: summary.to_json() for key, summary in sorted(self.sources.items())},
            "log_magnitude": {key: log_magnitude_json(summary.log_magnitude)
                              for key, summary in sorted(self.sources.items()) if summary.log_magnitude is not None},
            "tracks": sorted(self.tracks, key=lambda r: (r["role"], r["library"], r["id"], r["source"])),
        }


def store_rows(store: Store) -> list[dict]:
    """Totals per (library, role) of a store: tracks, audio, frames, split, groups, build rejects."""
    rows: dict[tuple[str, str], dict] = {}

    def row(library: str, role: str) -> dict:
        return rows.setdefault((library, role), {
            "input": str(store.path), "library": library, "role": role, **amount(0, 0.0, 0),
            "splits": {split: amount(0, 0.0, 0) for split in SPLITS}, "groups": set(), "rejects": {},
        })

    for track in store.tracks:
        record = row(track.library, track.role)
        for totals in (record, record["splits"].setdefault(track.split, amount(0, 0.0, 0))):
            totals["items"] += 1
            totals["seconds"] += track.duration
            totals["frames"] += track.frames
        if track.group is not None:
            record["groups"].add(track.group)
    for reject in store.rejects():
        record = row(reject.library, reject.role)
        record["rejects"][reject.code] = record["rejects"].get(reject.code, 0) + 1
    result = []
    for (_, _), record in sorted(rows.items()):
        for totals in (record, *record["splits"].values()):
            totals.update(amount(totals["items"], totals["seconds"], totals["frames"]))
        record["groups"] = len(record["groups"])
        record["rejects"] = dict(sorted(record["rejects"].items()))
        result.append(record)
    return result


def store_durations(store: Store) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = {}
    for track in store.tracks:
        durations.setdefault(track.role, []).append(track.duration)
    return durations

