"""vr_data.audio: formats, resampling, channel handling and every reject reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from vr_data import errors
from vr_data.audio import load_audio, probe, write_audio
from vr_data.errors import VRDataError


@pytest.mark.parametrize("extension", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("sample_rate", [16000, 22050, 44100, 48000])
def test_formats_and_rates_resample_to_target(tmp_path, extension, sample_rate):
    if extension == "mp3" and sample_rate == 22050:
        sample_rate = 24000  # an MPEG-2 layer III rate
    path = tmp_path / f"x.{extension}"
    write_audio(path, tone(1.5, sample_rate), sample_rate)
    audio = load_audio(path, 44100)
    assert audio.dtype == np.float32 and audio.shape[0] == 2
    assert abs(audio.shape[1] - 1.5 * 44100) < 0.03 * 44100  # mp3 may pad a frame
    assert probe(path).sample_rate == sample_rate


def test_resampled_content_matches(tmp_path):
    signal = tone(1.0, 48000, channels=2)
    write_audio(tmp_path / "x.wav", signal, 48000, subtype="FLOAT")
    audio = load_audio(tmp_path / "x.wav", 48000)
    np.testing.assert_allclose(audio, signal, atol=1e-6)
    resampled = load_audio(tmp_path / "x.wav", 44100)
    assert resampled.shape[1] == 44100
    # Energy is preserved by band-limited resampling of a low-frequency signal.
    assert np.isclose(np.mean(resampled**2), np.mean(signal**2), rtol=0.02)


def test_mono_is_duplicated_to_stereo(tmp_path):
    write_audio(tmp_path / "mono.flac", tone(1.0, 44100, channels=1), 44100)
    audio = load_audio(tmp_path / "mono.flac")
    assert audio.shape[0] == 2
    np.testing.assert_array_equal(audio[0], audio[1])


def test_more_than_two_channels_refused_or_downmixed(tmp_path):
    write_audio(tmp_path / "surround.wav", tone(1.0, 44100, channels=6), 44100)
    with pytest.raises(VRDataError) as raised:
        load_audio(tmp_path / "surround.wav")
    assert raised.value.code == errors.CHANNELS and "surround.wav" in str(raised.value)
    assert load_audio(tmp_path / "surround.wav", downmix=True).shape[0] == 2


@pytest.mark.parametrize(
    "name, make, code",
    [
        ("corrupt.wav", lambda p: p.write_bytes(b"RIFF....WAVEjunkjunk"), errors.UNREADABLE),
        ("notaudio.flac", lambda p: p.write_text("hello"), errors.UNREADABLE),
        ("empty.wav", lambda p: sf.write(str(p), np.zeros((0, 2), np.float32), 44100), errors.EMPTY),
        ("short.wav", lambda p: write_audio(p, tone(0.2), 44100), errors.TOO_SHORT),
        ("silent.wav", lambda p: write_audio(p, np.zeros((2, 44100), np.float32), 44100), errors.SILENT),
        ("nan.wav", lambda p: sf.write(str(p), np.full((44100, 2), np.nan, np.float32), 44100, subtype="FLOAT"),
         errors.NON_FINITE),
        ("missing.wav", lambda p: None, errors.MISSING),
    ],
)
def test_reject_reasons(tmp_path, name, make, code):
    path = tmp_path / name
    make(path)
    with pytest.raises(VRDataError) as raised:
        load_audio(path, min_seconds=1.0)
    assert raised.value.code == code
    message = str(raised.value)
    assert name in message and "\n" not in message


def test_excerpt_reading(tmp_path):
    write_audio(tmp_path / "x.wav", tone(3.0), 44100, subtype="FLOAT")
    full = load_audio(tmp_path / "x.wav")
    excerpt = load_audio(tmp_path / "x.wav", start_seconds=1.0, max_seconds=0.5)
    np.testing.assert_array_equal(excerpt, full[:, 44100:44100 + 22050])
