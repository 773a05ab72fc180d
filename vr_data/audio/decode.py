"""Audio decoding for every library: soundfile (wav, flac, ogg, mp3) + soxr resampling.

`load_audio` returns float32 `(channels=2, samples)` at the target rate: mono is duplicated to
stereo, more than two channels are refused unless `downmix=True`. Every way a file can be
unusable raises `VRDataError` with the path and a reject code (see `vr_data.errors`, and
`TRUNCATED`/`UNAVAILABLE` here). m4a/mp4/aac go through an `ffmpeg` executable when one is on
PATH (optional fallback).

Only regular files are opened: a FIFO named `pipe.wav` would block the decoder's open forever.
`decode_file` is what a scan records: the header, the length the file really decodes to, and a
`truncated` refusal when that falls short of what the header declares (a cut-off download).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from vr_data import errors
from vr_data.errors import VRDataError
from vr_data.io import atomic_write_with, not_regular_reason, os_reason

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a", ".mp4", ".aac", ".opus")
_FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".aac")
DEFAULT_SAMPLE_RATE = 44100
DEFAULT_SILENCE_DBFS = -60.0
# Reject codes beside those of vr_data.errors.
TRUNCATED, UNAVAILABLE = errors.TRUNCATED, errors.UNAVAILABLE  # defined with the other reject codes
# mp3 headers without an exact sample count (no Xing/LAME frame) only estimate the length from the
# bitrate: allow two frames of 1152 samples or 0.5 % before calling the file truncated.
_MP3_FRAME = 1152


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
    check_openable(path)
    if path.suffix.lower() in _FFMPEG_EXTENSIONS:
        audio, rate = _read_ffmpeg(path)
        return AudioInfo(str(path), rate, audio.shape[1], audio.shape[0], path.suffix.lower().lstrip("."))
    try:
        info = sf.info(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise VRDataError(path, f"cannot decode audio ({short_reason(error, path)})", errors.UNREADABLE) from None
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
    (or -inf) disables the all-silent check. Raises VRDataError with one of the reject codes.
    """
    path = Path(path)
    audio, source_rate = _read(path, start_seconds, max_seconds)  # (samples, channels)
    return _checked(path, audio, source_rate, sample_rate, downmix, min_seconds, silence_dbfs)


def _checked(path: Path, audio: np.ndarray, source_rate: int, sample_rate: int, downmix: bool,
             min_seconds: float, silence_dbfs: float | None) -> np.ndarray:
    """`(samples, channels)` as read -> checked float32 `(2, samples)` at `sample_rate`."""
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
        reason = silence_reason(max(high, -low), silence_dbfs)
        if reason is not None:
            raise VRDataError(path, reason, errors.SILENT)
    return np.ascontiguousarray(audio.T, dtype=np.float32)


def silence_reason(peak: float, silence_dbfs: float | None) -> str | None:
    """Why audio of linear `peak` is silent at threshold `silence_dbfs` (dBFS), or None.

    The threshold is inclusive ("at or below"); `None` or `-inf` switch the check off, so
    `--silence-dbfs -inf` keeps even all-zero files.
    """
    if silence_dbfs is None or silence_dbfs == float("-inf"):
        return None
    if peak > 10.0 ** (silence_dbfs / 20.0):
        return None
    if peak <= 0.0:
        return "silent (every sample is zero)"
    return f"silent (peak {20 * np.log10(peak):.1f} dBFS <= {silence_dbfs:g} dBFS)"


def decode_file(
    path: str | Path, *, downmix: bool = False, min_seconds: float = 0.0,
    silence_dbfs: float | None = DEFAULT_SILENCE_DBFS,
) -> tuple[AudioInfo, np.ndarray]:
    """Decode all of `path` at its own rate: `(info, audio)` with audio float32 `(2, samples)`.

    `info.samples` is the length the file decodes to, not the header's claim; a file that
    decodes to fewer samples than its header declares raises `TRUNCATED` (so does an Ogg file
    whose last page is cut off or is not its end-of-stream page). Other checks as `load_audio`.
    """
    path = Path(path)
    info = probe(path)
    raw, rate = _read(path, 0.0, None)
    if raw.ndim == 1:
        raw = raw[:, None]
    decoded = raw.shape[0]
    problem = truncation_reason(path, info, decoded)
    if problem is not None:
        raise VRDataError(path, problem, TRUNCATED)
    audio = _checked(path, raw, rate, rate, downmix, min_seconds, silence_dbfs)
    return replace(info, samples=decoded), audio


def truncation_reason(path: Path, info: AudioInfo, decoded: int) -> str | None:
    """Why a file that decoded to `decoded` samples per channel is cut short, or None."""
    suffix = path.suffix.lower()
    if suffix in (".ogg", ".opus"):
        return _ogg_truncation(path)
    declared = _wav_declared_samples(path) if suffix == ".wav" else info.samples
    if declared is None or declared <= 0:
        return None
    tolerance = max(2 * _MP3_FRAME, declared // 200) if suffix == ".mp3" else 0
    if decoded + tolerance >= declared:
        return None
    rate = info.sample_rate or 1
    return (f"truncated: decodes to {decoded / rate:.2f} s of the {declared / rate:.2f} s its header declares "
            f"({decoded} of {declared} samples)")


def _wav_declared_samples(path: Path) -> int | None:
    """Samples per channel the RIFF `data` chunk declares (libsndfile reports what is present).

    None when unknown: not RIFF/WAVE (RF64, RIFX), or a size left at 0 or 0xFFFFFFFF by a
    streaming writer.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"fmt ":
                    fmt = handle.read(min(size, 16))
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                    handle.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
                elif name == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def _ogg_truncation(path: Path) -> str | None:
    """An Ogg stream ends with a complete page flagged end-of-stream; a cut file does not.

    Searches the tail backwards for the page that ends exactly at the end of the file ("OggS"
    can also occur inside packet data, so a lone match proves nothing).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = max(0, size - 70_000)  # an Ogg page is at most 65,307 bytes
        handle.seek(start)
        tail = handle.read()
    incomplete = False
    position = tail.rfind(b"OggS")
    while position >= 0:
        header_end = position + 27
        if len(tail) >= header_end and tail[position + 4] == 0:
            segments = tail[position + 26]
            if len(tail) < header_end + segments:
                incomplete = True
            else:
                end = header_end + segments + sum(tail[header_end:header_end + segments])
                if end == len(tail):
                    if tail[position + 5] & 0x04:
                        return None
                    return "truncated: the Ogg stream ends without its end-of-stream page"
                incomplete = incomplete or end > len(tail)
        elif len(tail) < header_end:
            incomplete = True
        position = tail.rfind(b"OggS", 0, position)
    return "truncated: the last Ogg page is cut off" if incomplete else None


def check_openable(path: Path) -> None:
    """Refuse what is not a regular file we may read, before any decoder opens it.

    A FIFO would block the decoder's open forever, and libsndfile reports a permission problem
    as "System error.": say which it is. Missing files get `missing`, permission and I/O
    errors `unavailable` (they may pass on a retry), other kinds of file `unreadable`.
    """
    reason = not_regular_reason(path)
    if reason == "file not found":
        raise VRDataError(path, reason, errors.MISSING)
    if reason is not None:
        code = errors.MISSING if reason == "broken symbolic link" else errors.UNREADABLE
        raise VRDataError(path, reason, code)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise VRDataError(path, f"cannot open file ({os_reason(error)})", UNAVAILABLE) from None
    os.close(descriptor)


def _read(path: Path, start_seconds: float, max_seconds: float | None) -> tuple[np.ndarray, int]:
    check_openable(path)
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
        raise VRDataError(path, f"cannot decode audio ({short_reason(error, path)})", errors.UNREADABLE) from None
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
    """Write `(channels, samples)` float audio; the format follows the file extension.

    Through `vr_data.io.atomic_write_with`: a failure leaves no partial file and a device, a
    FIFO or a folder (or a symlink to one) is refused, not replaced."""
    path = Path(path)
    samples = np.asarray(audio, dtype=np.float32).T
    format = kwargs.pop("format", None) or path.suffix.lstrip(".").upper()   # the temporary name has no suffix

    def write(temporary: Path) -> None:
        # In blocks: libsndfile's Vorbis encoder crashed (segfault) on 60 s written in one call.
        with sf.SoundFile(str(temporary), "w", sample_rate, samples.shape[1], format=format, **kwargs) as handle:
            for start in range(0, len(samples), WRITE_BLOCK_FRAMES):
                handle.write(samples[start:start + WRITE_BLOCK_FRAMES])

    atomic_write_with(path, write)


WRITE_BLOCK_FRAMES = 16384


# libsndfile messages that mislead once we know the file is a regular, readable file.
_CLEARER = {
    "possibly a pipe?": "unknown or damaged header, or too short to be audio",
    "System error.": "the system refused to read it",
    "flac decoder lost sync": "the FLAC stream breaks off: truncated or damaged",
}


def short_reason(error: Exception, path: Path) -> str:
    """The library's message in one line, without repeating the path the caller already names."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.replace(f"Error opening '{path}': ", "").replace(str(path), "<file>")
    for fragment, clearer in _CLEARER.items():
        if fragment in text:
            return clearer
    return text[:160]
