"""BS.1770-4 loudness against the standard's coefficients and EBU Tech 3341's test signals;
peak, clipping and silence measures against signals built to have known values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from vr_data.audio import loudness


def _sine(seconds: float, dbfs: float, rate: int = 48000, hz: float = 1000.0) -> np.ndarray:
    """A sine whose peak is `dbfs`, float64 `(samples,)`."""
    t = np.arange(int(round(seconds * rate))) / rate
    return 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * t)


def _stereo(*segments: np.ndarray) -> np.ndarray:
    signal = np.concatenate(segments)
    return np.stack([signal, signal])


def test_k_weighting_at_48k_equals_the_standards_table():
    (shelf_b, shelf_a), (highpass_b, highpass_a) = loudness.k_weighting(48000)
    # ITU-R BS.1770-4, tables 1 and 2.
    np.testing.assert_allclose(shelf_b, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-10)
    np.testing.assert_allclose(shelf_a, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-10)
    np.testing.assert_allclose(highpass_b, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(highpass_a, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-10)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_k_weighting_gain_at_997_hz_is_what_the_minus_0691_offset_cancels(rate):
    (shelf_b, shelf_a), (highpass_b, highpass_a) = loudness.k_weighting(rate)
    _, shelf = scipy.signal.freqz(shelf_b, shelf_a, [997.0], fs=rate)
    _, highpass = scipy.signal.freqz(highpass_b, highpass_a, [997.0], fs=rate)
    assert 20 * np.log10(abs(shelf[0] * highpass[0])) == pytest.approx(0.691, abs=0.005)


@pytest.mark.parametrize("dbfs", [-23.0, -33.0])
def test_ebu_3341_stereo_sine_reads_its_level(dbfs):
    # EBU Tech 3341 cases 1 and 2: 1 kHz, both channels at `dbfs` -> `dbfs` LUFS +-0.1.
    assert loudness.integrated_loudness(_stereo(_sine(20.0, dbfs)), 48000) == pytest.approx(dbfs, abs=0.1)


def test_ebu_3341_relative_gate_ignores_quiet_passages():
    # Case 3: -36 / -23 / -36 dBFS for 10 / 60 / 10 s -> -23.0 LUFS +-0.1.
    audio = _stereo(_sine(10, -36), _sine(60, -23), _sine(10, -36))
    assert loudness.integrated_loudness(audio, 48000) == pytest.approx(-23.0, abs=0.1)


def test_ebu_3341_absolute_gate_ignores_near_silence():
    # Case 4: -72 / -36 / -23 / -36 / -72 dBFS for 10 / 10 / 60 / 10 / 10 s -> -23.0 LUFS +-0.1.
    audio = _stereo(_sine(10, -72), _sine(10, -36), _sine(60, -23), _sine(10, -36), _sine(10, -72))
    assert loudness.integrated_loudness(audio, 48000) == pytest.approx(-23.0, abs=0.1)


def test_ebu_3341_gated_mean_of_two_levels():
    # Case 5: -26 / -20 / -26 dBFS for 20 / 20.1 / 20 s -> -23.0 LUFS +-0.1.
    audio = _stereo(_sine(20, -26), _sine(20.1, -20), _sine(20, -26))
    assert loudness.integrated_loudness(audio, 48000) == pytest.approx(-23.0, abs=0.1)


def test_full_scale_sine_in_one_channel_reads_minus_3_01():
    left = _sine(5.0, 0.0, hz=997.0)
    assert loudness.integrated_loudness(np.stack([left, np.zeros_like(left)]), 48000) == pytest.approx(-3.01, abs=0.01)


def test_loudness_does_not_depend_on_the_sample_rate():
    at_48k = loudness.integrated_loudness(_stereo(_sine(5.0, -18.0, 48000, 440.0)), 48000)
    at_44k = loudness.integrated_loudness(_stereo(_sine(5.0, -18.0, 44100, 440.0)), 44100)
    assert at_44k == pytest.approx(at_48k, abs=0.01)


def test_silence_and_audio_shorter_than_a_block_have_no_loudness():
    assert loudness.integrated_loudness(np.zeros((2, 48000)), 48000) == float("-inf")
    assert loudness.integrated_loudness(_stereo(_sine(0.39, -10.0)), 48000) == float("-inf")
    assert loudness.block_loudness(_stereo(_sine(0.5, -10.0)), 48000).shape == (2,)  # 0.0-0.4 and 0.1-0.5 s


def test_peak_and_clipping():
    audio = np.full((2, 1000), 0.25)
    audio[0, 10:13] = 1.0
    audio[1, 500] = -0.9995
    audio[1, 501] = 0.998  # just under the clip level
    assert loudness.peak_dbfs(audio) == pytest.approx(0.0)
    assert loudness.clipped_samples(audio) == 4
    assert loudness.peak_dbfs(np.zeros((2, 10))) == float("-inf")
    assert loudness.peak_dbfs(audio * 0.5) == pytest.approx(20 * np.log10(0.5))


def test_silence_fraction_counts_whole_silent_windows():
    rate = 44100
    signal = _sine(1.0, -20.0, rate, 440.0)
    quiet = signal.copy()
    quiet[: int(0.3 * rate)] = 0.0  # three whole 100 ms windows
    assert loudness.silence_fraction(np.stack([quiet, quiet]), rate) == pytest.approx(0.3)
    # 0.35 s of silence: the window 0.3-0.4 s is half tone, its RMS is far above -60 dBFS.
    quiet[: int(0.35 * rate)] = 0.0
    assert loudness.silence_fraction(np.stack([quiet, quiet]), rate) == pytest.approx(0.3)
    # A silent channel does not make a window silent: RMS is over both channels.
    assert loudness.silence_fraction(np.stack([signal, np.zeros_like(signal)]), rate) == 0.0
    # The last, shorter window counts for its length.
    tail = np.concatenate([signal, np.zeros(int(0.05 * rate))])
    assert loudness.silence_fraction(np.stack([tail, tail]), rate) == pytest.approx(0.05 / 1.05)
    # Below the threshold (-70 dBFS RMS < -60) is silence too, not only digital zeros.
    assert loudness.silence_fraction(np.stack([signal, signal]) * 10 ** (-50 / 20), rate) == 1.0
    assert loudness.silence_fraction(np.zeros((2, 0)), rate) == 0.0


def test_piecewise_processing_equals_processing_at_once(monkeypatch):
    from vr_data.stats.content import vocal_energy_db

    rng = np.random.default_rng(1)
    rate = 44100
    audio = rng.standard_normal((2, 3 * rate)) * np.linspace(0, 0.3, 3 * rate)
    audio[:, rate : rate + 7000] = 0.0  # a silent stretch across piece boundaries
    other = audio + 0.01 * rng.standard_normal(audio.shape)
    at_once = (loudness.integrated_loudness(audio, rate), loudness.silence_fraction(audio, rate),
               vocal_energy_db(other, audio))
    monkeypatch.setattr(loudness, "BLOCK_SAMPLES", 10_000)  # not a multiple of a step or a window
    pieces = (loudness.integrated_loudness(audio, rate), loudness.silence_fraction(audio, rate),
              vocal_energy_db(other, audio))
    assert pieces[0] == pytest.approx(at_once[0], abs=1e-9)
    assert pieces[1] == at_once[1] and pieces[1] > 0
    assert pieces[2] == pytest.approx(at_once[2], abs=1e-9)
