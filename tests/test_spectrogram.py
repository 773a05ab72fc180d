"""vr_data.dsp.stft: parity with librosa, exact frame counts, inversion, torch parity."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest

from vr_data.errors import VRDataError
from vr_data.dsp.stft import (
    StftConfig,
    istft,
    istft_frames_major,
    stft,
    stft_frames_major,
)

SAMPLE_RATE = 44100
LENGTHS = (100, 1023, 2048, 3001, 44101)
CONFIGS = (
    StftConfig(pad_end=False),
    StftConfig(n_fft=1024, hop_length=256, window="hamming", pad_end=False),
    StftConfig(n_fft=2048, hop_length=700, pad_end=False),
    StftConfig(pad_mode="reflect", pad_end=False),
    StftConfig(center=False, pad_end=False),
)


def _signal(kind: str, samples: int, seed: int = 0) -> np.ndarray:
    """Stereo float32 `(2, samples)`: white noise or a chord of decaying partials."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return (0.3 * rng.standard_normal((2, samples))).astype(np.float32)
    time = np.arange(samples) / SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * f * time + phase) / k for k, (f, phase) in enumerate([(220.0, 0.1), (277.2, 1.0), (329.6, 2.0), (3520.0, 0.5)], 1))
    return np.stack([0.5 * chord, 0.4 * chord * np.exp(-time)]).astype(np.float32)


def _librosa_stft(audio: np.ndarray, config: StftConfig) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_fft too large" for the short signals, on purpose
        return librosa.stft(
            audio, n_fft=config.n_fft, hop_length=config.hop_length, window=config.window, center=config.center, pad_mode=config.pad_mode
        )


def _librosa_istft(spec: np.ndarray, config: StftConfig, length: int | None) -> np.ndarray:
    return librosa.istft(spec, n_fft=config.n_fft, hop_length=config.hop_length, window=config.window, center=config.center, length=length)


def _assert_close(actual: np.ndarray, expected: np.ndarray, relative: float = 2e-6) -> None:
    """Equal to float32 precision: error within `relative` of the reference's peak."""
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    assert float(np.max(np.abs(actual - expected))) <= relative * scale


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.n_fft}-{c.hop_length}-{c.window}-{c.pad_mode}-c{int(c.center)}")
@pytest.mark.parametrize("kind", ["random", "tonal"])
def test_stft_and_istft_match_librosa(config: StftConfig, kind: str) -> None:
    for samples in LENGTHS:
        if not config.center and samples < config.n_fft:
            continue
        audio = _signal(kind, samples)
        expected = _librosa_stft(audio, config)
        spec = stft(audio, config)
        assert spec.dtype == np.complex64
        assert spec.shape == (2, config.bins, config.frames_for(samples))
        _assert_close(spec, expected)

        # Where few frames overlap a sample, both implementations divide by squared-window
        # sums near zero and float32 rounding is amplified; compare where that divisor is sane.
        for length in (None, samples):
            inverse = istft(spec, config, length=length)
            reference = _librosa_istft(expected, config, length)
            assert inverse.dtype == np.float32
            assert inverse.shape == reference.shape
            assert inverse.shape[1] == (samples if length else config.samples_for(spec.shape[2]))
            trusted = _well_covered(config, spec.shape[2], inverse.shape[1])
            if trusted.any():
                _assert_close(inverse[:, trusted], reference[:, trusted], relative=1e-5)


def _well_covered(config: StftConfig, frames: int, samples: int) -> np.ndarray:
    """Bool `(samples,)`: output samples whose overlapped squared window is at least 0.1."""
    envelope = librosa.filters.window_sumsquare(
        window=config.window, n_frames=frames, hop_length=config.hop_length, n_fft=config.n_fft, dtype=np.float32
    )
    start = config.n_fft // 2 if config.center else 0
    envelope = np.pad(envelope[start : start + samples], (0, max(0, samples - (len(envelope) - start))))
    return envelope >= 0.1


@pytest.mark.parametrize("samples", LENGTHS)
def test_pad_end_is_librosa_of_the_zero_padded_signal_and_inverts_everywhere(samples: int) -> None:
    config = StftConfig()
    audio = _signal("tonal", samples, seed=1)
    padded = np.pad(audio, ((0, 0), (0, config.padded_samples(samples) - samples)))
    assert config.padded_samples(samples) % config.hop_length == 0
    spec = stft(audio, config)
    assert spec.shape == (2, config.bins, config.frames_for(samples)) == (2, 1025, 1 + -(-samples // 1024))
    _assert_close(spec, _librosa_stft(padded, config))
    # Every sample is covered by two frames: the inverse is exact to float32 up to the last one.
    _assert_close(istft(spec, config, length=samples), audio, relative=1e-5)


def test_frames_major_variants_are_the_same_transform() -> None:
    config = StftConfig()
    audio = _signal("random", 30_000, seed=2)
    frames_major = stft_frames_major(audio, config)
    assert frames_major.flags.c_contiguous and frames_major.shape == (2, config.frames_for(30_000), config.bins)
    np.testing.assert_array_equal(frames_major.transpose(0, 2, 1), stft(audio, config))
    np.testing.assert_array_equal(istft_frames_major(frames_major, config, 30_000), istft(stft(audio, config), config, 30_000))
    mono = stft(audio[0], config)
    assert mono.shape == (config.bins, config.frames_for(30_000))
    np.testing.assert_array_equal(istft(mono, config, 30_000), istft(stft(audio, config), config, 30_000)[0])


def test_config_round_trips_and_validates() -> None:
    config = StftConfig(n_fft=1024, hop_length=256, window="hamming", center=False, pad_end=False)
    assert StftConfig.from_dict(config.to_dict()) == config
    assert StftConfig().bins == 1025
    assert StftConfig().seconds_per_frame == pytest.approx(1024 / 44100)
    assert StftConfig(center=False, pad_end=False).frames_for(2047) == 0
    assert StftConfig(center=False, pad_end=True).frames_for(2047) == 1
    with pytest.raises(VRDataError):
        StftConfig.from_dict({"n_fft": 2048, "hops": 3})
    with pytest.raises(VRDataError):
        StftConfig(hop_length=4096)
    with pytest.raises(VRDataError):
        StftConfig(pad_mode="edge")
    with pytest.raises(VRDataError):
        stft(np.zeros((2, 100), np.float32), StftConfig(center=False, pad_end=False))
