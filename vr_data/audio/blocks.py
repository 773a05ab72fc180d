"""Songs decoded and written block by block: bounded memory for songs of any length.

`open_audio_blocks(path)` opens a file for decoding in float32 `(channels, n)` blocks at its own
rate (soundfile reads wav, flac, ogg, mp3 and aiff block by block; m4a/mp4/aac are decoded whole
through `load_audio`). `SoundFileWriter` writes such blocks into a wav, flac or mp3 file under a
temporary name (`vr_data.io.AtomicOutput`), renamed over the target by `commit`, so a failure
leaves no half-written song and a non-regular target (a device, a FIFO) is never replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from vr_data import errors
from vr_data.audio.decode import (
    AUDIO_EXTENSIONS, DEFAULT_SAMPLE_RATE, AudioInfo, check_openable, load_audio, short_reason, truncation_reason,
)
from vr_data.errors import VRDataError
from vr_data.io import UNWRITABLE, AtomicOutput

BLOCK_SAMPLES = 1 << 18          # decoded samples per block (about 6 s at 44.1 kHz)
FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


@dataclass
class DecodedBlocks:
    """A song opened for block-wise decoding: its rate, channels, header length and blocks.

    `warning`: a problem that does not stop decoding, said the way scan says it (a file that
    decodes to less than its header declares is `truncated: ...`), or None.
    """

    sample_rate: int
    channels: int
    samples: int
    blocks: Iterator[np.ndarray]
    warning: str | None = None

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def open_audio_blocks(path: str | Path, block_samples: int = BLOCK_SAMPLES) -> DecodedBlocks:
    """Open `path` for decoding in float32 `(channels, n)` blocks at its own rate.

    Raises VRDataError for a missing file, what is not a regular file (a FIFO, a directory, a
    symlink loop: said as such), an undecodable, empty or more-than-stereo file; a non-finite
    sample raises when its block is read. A truncated wav or ogg is opened with a `warning`.
    """
    path = Path(path)
    check_openable(path)
    try:
        handle = sf.SoundFile(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        if path.suffix.lower() not in AUDIO_EXTENSIONS or path.suffix.lower() in (".wav", ".flac", ".ogg"):
            raise VRDataError(path, f"cannot decode audio ({short_reason(error, path)})", errors.UNREADABLE) from None
        audio = load_audio(path, silence_dbfs=None)     # containers soundfile does not read
        blocks = (audio[:, at: at + block_samples] for at in range(0, audio.shape[1], block_samples))
        return DecodedBlocks(DEFAULT_SAMPLE_RATE, 2, audio.shape[1], blocks)
    channels, samples, rate = int(handle.channels), int(handle.frames), int(handle.samplerate)
    if channels > 2:
        handle.close()
        raise VRDataError(path, f"{channels} channels; only mono and stereo songs are separated", errors.CHANNELS)
    if samples == 0:
        handle.close()
        raise VRDataError(path, "no audio samples", errors.EMPTY)
    # libsndfile reports the samples a wav holds; the header may declare more (a cut-off copy).
    warning = truncation_reason(path, AudioInfo(str(path), rate, channels, samples, handle.format.lower()), samples)
    return DecodedBlocks(rate, channels, samples, _read_blocks(handle, path, block_samples), warning)


def _read_blocks(handle: sf.SoundFile, path: Path, block_samples: int) -> Iterator[np.ndarray]:
    with handle:
        while True:
            try:
                block = handle.read(block_samples, dtype="float32", always_2d=True)   # (n, channels)
            except Exception as error:
                raise VRDataError(path, f"cannot decode audio ({short_reason(error, path)})",
                                  errors.UNREADABLE) from None
            if block.shape[0] == 0:
                return
            if not np.isfinite(block).all():
                raise VRDataError(path, "non-finite samples (NaN or inf)", errors.NON_FINITE)
            yield np.ascontiguousarray(block.T)


def output_formats() -> list[str]:
    """The formats this soundfile build can write (mp3 needs libsndfile >= 1.1)."""
    return [name for name, major in FORMATS.items() if major in sf.available_formats()]


def check_output_format(format: str, subtype: str) -> None:
    """Refuse a format/subtype pair before any work: flac has no float samples; mp3 is lossy
    (its own subtype, whatever `subtype` says) and needs a soundfile that writes it."""
    if format not in FORMATS:
        raise VRDataError(None, f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format not in output_formats():
        raise VRDataError(None, f"this soundfile (libsndfile {sf.__libsndfile_version__}) cannot write {format}")
    if subtype not in SUBTYPES:
        raise VRDataError(None, f"subtype must be one of {', '.join(SUBTYPES)}, not {subtype!r}")
    if format != "mp3" and not sf.check_format(FORMATS[format], subtype):
        raise VRDataError(None, f"{format} files cannot hold {subtype} samples")


class SoundFileWriter:
    """A sound file written block by block under a temporary name, renamed by `commit`.

    `write(audio)` takes float `(channels, n)`; integer and mp3 samples are clipped to [-1, 1]
    (they would wrap around instead of saturating). Refuses a non-regular target at once.
    """

    def __init__(self, path: str | Path, sample_rate: int, channels: int, format: str, subtype: str):
        self.output = AtomicOutput(path)
        self.path = self.output.path
        self.clip = subtype != "FLOAT" or format == "mp3"
        subtype = "MPEG_LAYER_III" if format == "mp3" else subtype
        try:
            self._handle = sf.SoundFile(str(self.output.temporary), "w", samplerate=sample_rate, channels=channels,
                                        subtype=subtype, format=FORMATS[format])
        except (OSError, sf.LibsndfileError) as error:
            self.output.abort()
            raise VRDataError(self.path, f"cannot write ({short_reason(error, self.output.temporary)})",
                              UNWRITABLE) from None

    def write(self, audio: np.ndarray) -> None:
        if self.clip:
            audio = np.clip(audio, -1.0, 1.0)
        self._handle.write(np.ascontiguousarray(audio.T))

    def commit(self) -> None:
        self._handle.close()
        self.output.commit()

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.output.abort()
