"""Audio decoding for every library: soundfile (wav, flac, ogg, mp3) + soxr resampling.

`load_audio` returns float32 `(channels=2, samples)` at the target rate: mono is duplicated to
stereo, more than two channels are refused unless `downmix=True`. Every way a file can be
unusable raises `VRDataError` with the path and a reject code (see `vr_data.errors`).
m4a/mp4/aac go through an `ffmpeg` executable when one is on PATH (optional fallback).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from vr_data import errors
from vr_data.errors import VRDataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a", ".mp4", ".aac", ".opus")
_FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".aac")
DEFAULT_SAMPLE_RATE = 44100
DEFAULT_SILENCE_DBFS = -60.0


@dataclass(frozen=True)
class AudioInfo:
    """What the container says, without decoding: rate in Hz, duration in seconds."""

    path: str
    sample_rate: int
    channels: int
    samples: int
    format: str

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


def probe(path: str | Path) -> AudioInfo:
    """Header information of `path`; raises VRDataError(unreadable) on anything undecodable."""
    path = Path(path)
    if path.suffix.lower() in _FFMPEG_EXTENSIONS:
        audio, rate = _read_ffmpeg(path)
        return AudioInfo(str(path), rate, audio.shape[1], audio.shape[0], path.suffix.lower().lstrip("."))
    try:
        info = sf.info(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise VRDataError(path, f"cannot decode audio ({_short(error, path)})", errors.UNREADABLE) from None
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames), info.format.lower())


def load_audio(
    path: str | Path,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    *,
    downmix: bool = False,
    min_seconds: float = 0.0,
    silence_dbfs: float | None = DEFAULT_SILENCE_DBFS,
    start_seconds: float = 0.0,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode `path` to float32 `(2, samples)` at `sample_rate` Hz.

    `start_seconds`/`max_seconds` read an excerpt (e.g. the first seconds of a pair for the offset
    check); the checks for emptiness and length then apply to the excerpt. `silence_dbfs=None`
    disables the all-silent check. Raises VRDataError with one of the reject codes.
    """
    path = Path(path)
    audio, source_rate = _read(path, start_seconds, max_seconds)  # (samples, channels)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.shape[0] == 0:
        raise VRDataError(path, "no audio samples", errors.EMPTY)
    channels = audio.shape[1]
    if channels > 2:
        if not downmix:
            raise VRDataError(path, f"{channels} channels; only mono and stereo (use downmix to fold)", errors.CHANNELS)
        audio = _downmix_to_stereo(audio)
    # min/max propagate NaN and reach +-inf: two reductions instead of a full-size bool array.
    low, high = float(audio.min()), float(audio.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise VRDataError(path, "non-finite samples (NaN or inf)", errors.NON_FINITE)
    if source_rate != sample_rate:
        audio = soxr.resample(audio, source_rate, sample_rate, quality="HQ")
    if audio.shape[1] == 1:
        audio = np.repeat(audio, 2, axis=1)  # mono is centred stereo
    seconds = audio.shape[0] / sample_rate
    if seconds < min_seconds:
        raise VRDataError(path, f"{seconds:.2f} s is shorter than the minimum {min_seconds:g} s", errors.TOO_SHORT)
    if silence_dbfs is not None:
        # Resampling can move the peak a little; the silence test does not need that precision.
        peak = max(high, -low)
        if peak <= 10.0 ** (silence_dbfs / 20.0):
            peak_db = 20 * np.log10(peak) if peak > 0 else float("-inf")
            raise VRDataError(path, f"silent (peak {peak_db:.1f} dBFS <= {silence_dbfs:g} dBFS)", errors.SILENT)
    return np.ascontiguousarray(audio.T, dtype=np.float32)


def _read(path: Path, start_seconds: float, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if not path.exists():
        raise VRDataError(path, "file not found", errors.MISSING)
    if path.suffix.lower() in _FFMPEG_EXTENSIONS:
        audio, rate = _read_ffmpeg(path)
        start = int(start_seconds * rate)
        stop = None if max_seconds is None else start + int(max_seconds * rate)
        return audio[start:stop], rate
    try:
        with sf.SoundFile(str(path)) as handle:
            rate = int(handle.samplerate)
            start = int(start_seconds * rate)
            if start:
                handle.seek(min(start, max(handle.frames, 0)))
            frames = -1 if max_seconds is None else int(max_seconds * rate)
            audio = handle.read(frames, dtype="float32", always_2d=True)
    except VRDataError:
        raise
    except Exception as error:
        raise VRDataError(path, f"cannot decode audio ({_short(error, path)})", errors.UNREADABLE) from None
    return audio, rate


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode through an ffmpeg executable to 44.1 kHz float32 (optional fallback)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise VRDataError(path, f"{path.suffix} needs ffmpeg on PATH (optional dependency)", errors.UNREADABLE)
    probe_cmd = [ffmpeg, "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "2", "-ar", str(DEFAULT_SAMPLE_RATE), "-"]
    result = subprocess.run(probe_cmd, capture_output=True, check=False)
    if result.returncode != 0:
        raise VRDataError(path, f"ffmpeg cannot decode ({result.stderr.decode(errors='replace').strip()[:120]})")
    audio = np.frombuffer(result.stdout, dtype=np.float32).reshape(-1, 2)
    return audio, DEFAULT_SAMPLE_RATE


def _downmix_to_stereo(audio: np.ndarray) -> np.ndarray:
    """Fold N > 2 channels: even-indexed channels to left, odd to right, equal-power."""
    left = audio[:, 0::2].mean(axis=1)
    right = audio[:, 1::2].mean(axis=1)
    return np.stack([left, right], axis=1)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE, **kwargs) -> None:
    """Write `(channels, samples)` float audio; the format follows the file extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, sample_rate, **kwargs)


def _short(error: Exception, path: Path) -> str:
    """The library's message in one line, without repeating the path the caller already names."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.replace(f"Error opening '{path}': ", "").replace(str(path), "<file>")
    return text[:160]
