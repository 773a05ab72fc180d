"""What `vrdata stats` measures and with which constants; recorded in every report.

Histogram ranges are fixed so partial histograms from different tasks merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vr_data.audio import loudness
from vr_data.stats.running import Histogram
from vr_data.dsp.stft import StftConfig

LOUDNESS_NAME = "ITU-R BS.1770-4 integrated loudness (LUFS), K-weighted, gated at -70 LUFS and -10 LU"


@dataclass(frozen=True)
class StatsSettings:
    """Constants of the content statistics.

    `sample_rate` (Hz): audio is decoded at this rate before measuring. `silence_dbfs` and
    `silence_window_seconds`: a window whose RMS over both channels is below the threshold is
    silent. `clip_level`: |sample| at or above counts as clipped. `log_eps`: log magnitudes are
    `ln(|X| + log_eps)` of the STFT `stft`. `chunk_frames`: frames read from a store at a time
    (bounds memory). `duration_bins`: bins of the duration histograms (0 to the longest item).
    """

    sample_rate: int = 44100
    silence_dbfs: float = loudness.SILENCE_DBFS
    silence_window_seconds: float = loudness.SILENCE_WINDOW_SECONDS
    clip_level: float = loudness.CLIP_LEVEL
    log_eps: float = 1e-4
    stft: StftConfig = field(default_factory=StftConfig)
    chunk_frames: int = 4096
    duration_bins: int = 30

    def to_json(self) -> dict:
        return {
            "sample_rate": self.sample_rate, "silence_dbfs": self.silence_dbfs,
            "silence_window_seconds": self.silence_window_seconds, "clip_level": self.clip_level,
            "log_eps": self.log_eps, "log_magnitude": "ln(|X| + log_eps) per bin over frames and both channels",
            "stft": self.stft.to_dict(), "chunk_frames": self.chunk_frames, "loudness": LOUDNESS_NAME,
        }


# Fixed histogram ranges (values outside count as under/overflow).
def loudness_histogram() -> Histogram:
    """Integrated loudness, -70 to 0 LUFS in 1 LU bins."""
    return Histogram.linear(loudness.ABSOLUTE_GATE_LUFS, 0.0, 70)


def peak_histogram() -> Histogram:
    """Peak level, -60 to 0 dBFS in 1 dB bins (0 dBFS included in the last bin)."""
    return Histogram.linear(-60.0, 0.0, 60)


def fraction_histogram() -> Histogram:
    """A fraction (silence), 0 to 1 in 0.05 bins."""
    return Histogram.linear(0.0, 1.0, 20)


def vocal_energy_histogram() -> Histogram:
    """Vocal energy relative to the instrumental, -40 to +20 dB in 1 dB bins."""
    return Histogram.linear(-40.0, 20.0, 60)


def frame_level_histogram() -> Histogram:
    """Frame RMS level from the spectrogram, -120 to 0 dBFS in 2 dB bins."""
    return Histogram.linear(-120.0, 0.0, 60)


def duration_histogram(longest_seconds: float, bins: int) -> Histogram:
    """Durations from 0 to the longest (at least 1 s), `bins` equal bins."""
    return Histogram(np.linspace(0.0, max(float(longest_seconds), 1.0), bins + 1))
