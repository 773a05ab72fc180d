"""Streaming separation of songs: decode -> STFT -> mask network -> inverse STFT, block by block.

A song is never held as a whole spectrogram. Audio arrives in blocks (from the decoder,
`vr_data.audio.blocks`, or an array), is resampled to the model's rate, cut into STFT frames as
soon as a frame's samples are there (`vr_data.dsp.StreamingStft`), masked crop by crop with a
cross-fade (`masking.CropMasker`, the one way a song is masked), turned back into samples as soon
as no later frame overlaps them (`StreamingIstft`), resampled back to the song's own rate and
written. Memory is bounded by about one crop of frames plus one decoded block, whatever the
song's length; `benchmarks/bench_separate.py` measures it.

Every stage equals its whole-song counterpart: `StreamingStft` gives the frames `stft` gives,
`StreamingIstft` the samples `istft` gives, and the crop grid is a pure function of the frame
count. So a block size changes nothing but memory.

Conventions (docs/separation.md), besides the masking ones (`masking`):
- Mono songs are duplicated to the stereo model input; the two instrumental channels are
  averaged back to mono.
- The vocals are the song minus the instrumental, in the time domain at the song's own rate,
  so the two outputs sum to the decoded song exactly (before the output file's quantisation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vr_data import errors
from vr_data.audio.blocks import BLOCK_SAMPLES, SoundFileWriter, check_output_format, open_audio_blocks
from vr_data.dsp import StftConfig
from vr_data.dsp.streaming import StreamingIstft, StreamingStft, StreamResampler
from vr_data.errors import VRDataError
from vr_data.io import UNWRITABLE
from vr_data.mixer.normalisation import InputNormalisation
from vr_model.inference.masking import CHUNK_FRAMES, DEFAULT_OVERLAP, CropMasker, MaskNetwork

STEMS = ("instrumental", "vocals")
ProgressCallback = Callable[[int], None]  # called with the song's samples written so far


@dataclass(frozen=True)
class SeparationOptions:
    """How a song is cut for the network. `crop_frames`: frames per crop (default: the model's
    `max_frames`); `overlap`: fraction of a crop shared with the next, [0, 1); `batch_size`: crops
    per network call; `shifts`: crop grids, each shifted by a further 1/shifts of a hop, whose
    masks are averaged (demucs' name); `tta`: at least 2 shifts, plus a left/right-swapped pass.
    Refused when built (before any song is read) if out of range; `Separator` checks
    `crop_frames` against the network's `max_frames`."""

    crop_frames: int | None = None
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = 4
    tta: bool = False
    shifts: int = 1

    def __post_init__(self) -> None:
        if self.crop_frames is not None and self.crop_frames < 1:
            raise VRDataError(None, f"crop_frames must be at least 1, got {self.crop_frames}")
        if not 0.0 <= self.overlap < 1.0:
            raise VRDataError(None, f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise VRDataError(None, f"batch_size must be at least 1, got {self.batch_size}")
        if self.shifts < 1:
            raise VRDataError(None, f"shifts must be at least 1, got {self.shifts}")


@dataclass
class Separator:
    """A mask network with the normalisation and the STFT it was trained with."""

    network: MaskNetwork
    normalisation: InputNormalisation
    stft: StftConfig
    options: SeparationOptions = SeparationOptions()

    def __post_init__(self) -> None:
        if self.stft.bins != self.network.bins:
            raise VRDataError(None, f"the STFT gives {self.stft.bins} bins, the model takes {self.network.bins}")
        crop_frames = self.options.crop_frames
        if crop_frames is not None and not 1 <= crop_frames <= self.network.max_frames:
            raise VRDataError(None, f"crop_frames must be in 1..{self.network.max_frames} (the model's "
                                    f"max_frames), got {crop_frames}")

    def masker(self, swap_channels: bool = True) -> CropMasker:
        options = self.options
        return CropMasker(self.network, self.normalisation, options.crop_frames, options.overlap,
                          options.batch_size, options.tta, swap_channels, options.shifts)

    def instrumental_spectrogram(self, mixture_spec: np.ndarray) -> np.ndarray:
        """Complex `(channels, bins, frames)` mixture -> instrumental, the whole song at once
        (for spectrograms already in memory, such as a store's validation songs)."""
        masker = self.masker()
        parts = [masker.push(mixture_spec), masker.finish()]
        return np.concatenate(parts, axis=-1)

    def stream(self, blocks: Iterable[np.ndarray], sample_rate: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Separate a song that arrives as float32 blocks `(channels, n)` at `sample_rate` Hz.

        Yields `(mixture, instrumental)` block pairs at the song's rate and channel count (1 or
        2), in order; together they cover the song exactly, sample for sample.
        """
        model_rate, model_channels = self.stft.sample_rate, self.network.channels
        song = _SongBuffer()
        to_model = StreamResampler(sample_rate, model_rate)
        to_song = StreamResampler(model_rate, sample_rate)
        analysis, synthesis = StreamingStft(self.stft), StreamingIstft(self.stft)
        masker: CropMasker | None = None
        channels = None
        model_samples = 0

        def back_to_song(instrumental: np.ndarray, last: bool = False) -> np.ndarray:
            if channels == 1 and model_channels != 1:
                instrumental = instrumental.mean(axis=0, keepdims=True)   # the mono song's instrumental
            return to_song(instrumental, last)

        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if channels is None:
                channels = block.shape[0]
                if channels not in (1, model_channels):
                    raise VRDataError(None, f"{channels} channels; the model takes mono or {model_channels}",
                                      errors.CHANNELS)
                # Swapping the channels of a duplicated mono song would repeat the first pass.
                masker = self.masker(swap_channels=channels != 1)
            song.append(block)
            resampled = to_model(block)
            model_samples += resampled.shape[1]
            frames = analysis.push(_to_channels(resampled, model_channels))
            instrumental = back_to_song(_synthesise(synthesis, masker.push(frames)))
            if instrumental.shape[1]:
                yield song.take(instrumental.shape[1]), instrumental
        if channels is None or song.total == 0:
            raise VRDataError(None, "no audio samples", errors.EMPTY)
        resampled = to_model.finish(channels)
        model_samples += resampled.shape[1]
        frames = analysis.push(_to_channels(resampled, model_channels)) if resampled.shape[1] else None
        tail = [masker.push(frames)] if frames is not None else []
        tail += [masker.push(analysis.finish()), masker.finish()]
        model_tail = [_synthesise(synthesis, spec) for spec in tail] + [synthesis.finish(model_samples)]
        instrumental = back_to_song(np.concatenate(model_tail, axis=1), last=True)
        # The resampler's output count can differ from the song's by a sample: cut or pad to it.
        remaining = song.total - song.taken
        if instrumental.shape[1] != remaining:
            instrumental = instrumental[:, :remaining]
            instrumental = np.pad(instrumental, ((0, 0), (0, remaining - instrumental.shape[1])))
        if remaining:
            yield song.take(remaining), instrumental

    def separate_audio(self, mixture: np.ndarray, sample_rate: int,
                       block_samples: int = BLOCK_SAMPLES) -> np.ndarray:
        """Instrumental of float `(channels, samples)` audio at `sample_rate`: same shape and rate."""
        mixture = np.atleast_2d(np.asarray(mixture, dtype=np.float32))
        blocks = (mixture[:, at: at + block_samples] for at in range(0, mixture.shape[1], block_samples))
        parts = [instrumental for _, instrumental in self.stream(blocks, sample_rate)]
        return np.concatenate(parts, axis=1)

    def separate_file(self, path: str | Path, out_dir: str | Path, *, format: str = "wav",
                      subtype: str = "PCM_24", name: str | None = None, stems: tuple[str, ...] = STEMS,
                      on_progress: ProgressCallback | None = None,
                      block_samples: int = BLOCK_SAMPLES) -> "SeparatedSong":
        """Write `<name>_instrumental.<format>` and/or `<name>_vocals.<format>` into `out_dir`.

        `stems`: which of the two to write. The files have the song's own sample rate, channel
        count and exact length. They are written block by block under temporary names and
        renamed when complete (`vr_data.audio.blocks.SoundFileWriter`), so a failure leaves
        neither, and a target that is not a regular file is refused. Raises VRDataError for a
        file that cannot be decoded or an output that cannot be written.
        """
        path = Path(path)
        check_output_format(format, subtype)
        if not stems or set(stems) - set(STEMS):
            raise VRDataError(None, f"stems must be some of {', '.join(STEMS)}, not {', '.join(stems) or 'none'}")
        name = name or path.stem
        out_dir = Path(out_dir)
        targets = {stem: out_dir / f"{name}_{stem}.{format}" for stem in STEMS if stem in stems}
        decoded = open_audio_blocks(path, block_samples)
        writers: dict[str, SoundFileWriter] = {}
        written = 0
        try:
            for stem, target in targets.items():
                writers[stem] = SoundFileWriter(target, decoded.sample_rate, decoded.channels, format, subtype)
            for mixture, instrumental in self.stream(decoded.blocks, decoded.sample_rate):
                if "instrumental" in writers:
                    writers["instrumental"].write(instrumental)
                if "vocals" in writers:
                    writers["vocals"].write(mixture - instrumental)
                written += mixture.shape[1]
                if on_progress is not None:
                    on_progress(written)
            for writer in writers.values():
                writer.commit()
        except VRDataError as error:
            for writer in writers.values():
                writer.abort()
            if error.code == UNWRITABLE:
                raise VRDataError(error.path, f"cannot write the outputs of {path.name} ({error.reason})",
                                  UNWRITABLE) from None
            raise VRDataError(error.path or path, error.reason, error.code) from None
        except OSError as error:   # decoding errors are VRDataError already
            for writer in writers.values():
                writer.abort()
            raise VRDataError(out_dir, f"cannot write the outputs of {path.name} ({error})",
                              UNWRITABLE) from None
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return SeparatedSong(path, targets.get("instrumental"), targets.get("vocals"), decoded.sample_rate,
                             decoded.channels, written, decoded.warning)


@dataclass(frozen=True)
class SeparatedSong:
    """What `separate_file` wrote (a stem not asked for is None) and the decoder's warning."""

    source: Path
    instrumental: Path | None
    vocals: Path | None
    sample_rate: int
    channels: int
    samples: int
    warning: str | None = None

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def _synthesise(synthesis: StreamingIstft, spec: np.ndarray) -> np.ndarray:
    """Inverse STFT of many frames a chunk at a time: the per-frame buffers stay small."""
    parts = [synthesis.push(spec[..., at: at + CHUNK_FRAMES]) for at in range(0, spec.shape[-1], CHUNK_FRAMES)]
    if not parts:
        return synthesis.push(spec)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono duplicated to the model's channels (a centred stereo image)."""
    if audio.shape[0] == channels:
        return audio
    return np.repeat(audio, channels, axis=0)


class _SongBuffer:
    """The song's own samples, kept until their instrumental comes out (about one crop later)."""

    def __init__(self) -> None:
        self._blocks: deque[np.ndarray] = deque()
        self.total = 0
        self.taken = 0

    def append(self, block: np.ndarray) -> None:
        if block.shape[1]:
            self._blocks.append(block)
            self.total += block.shape[1]

    def take(self, count: int) -> np.ndarray:
        parts = []
        while count > 0:
            block = self._blocks[0]
            if block.shape[1] <= count:
                parts.append(self._blocks.popleft())
                count -= block.shape[1]
            else:
                parts.append(block[:, :count])
                self._blocks[0] = block[:, count:]
                count = 0
        out = np.concatenate(parts, axis=1) if len(parts) != 1 else parts[0]
        self.taken += out.shape[1]
        return out


