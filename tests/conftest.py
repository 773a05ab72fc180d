"""Shared test fixtures: small synthetic audio written in the formats users have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vr_data.audio import write_audio
from vr_data.testing.demo import instrumental_track, vocal_track


def tone(seconds: float = 2.0, sample_rate: int = 44100, channels: int = 2, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """A few harmonics plus a little noise, float32 `(channels, samples)`."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 110.0 * (1 + seed % 7)
    signal = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6))
    out = np.stack([signal * (1 + 0.1 * c) for c in range(channels)]) + 0.01 * rng.standard_normal((channels, t.size))
    return (level * out / np.max(np.abs(out))).astype(np.float32)


def write_pair(root: Path, mixture_name: str, instrumental_name: str, seconds: float = 2.0,
               sample_rate: int = 44100, seed: int = 0, offset_samples: int = 0,
               instrumental_seconds: float | None = None) -> tuple[Path, Path]:
    """Write a mixture (instrumental + vocal) and its instrumental under mixtures/ and instruments/."""
    instrumental = instrumental_track(seconds, sample_rate, seed)
    vocal = vocal_track(seconds, sample_rate, seed)
    mixture = np.clip(instrumental + vocal, -1, 1)
    if offset_samples:
        instrumental = np.concatenate([np.zeros((2, offset_samples), np.float32), instrumental[:, :-offset_samples]], axis=1)
    if instrumental_seconds is not None:
        instrumental = instrumental_track(instrumental_seconds, sample_rate, seed)
    mixture_path = root / "mixtures" / mixture_name
    instrumental_path = root / "instruments" / instrumental_name
    write_audio(mixture_path, mixture, sample_rate)
    write_audio(instrumental_path, instrumental, sample_rate)
    return mixture_path, instrumental_path


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: its models are small, and two spinning OpenMP
    threads on two busy cores made the model tests several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
