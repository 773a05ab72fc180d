"""Streaming separation: the streaming STFT and inverse equal the whole-song ones, crops and blocks
leave no trace, outputs keep the song's rate, channels and length."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from test_separate_support import (
    OPTIONS, STFT, constant_mask_model, identity_model, random_model, separator, snr_db, song, write_checkpoint,
)
from vr_data.dsp import StftConfig, istft, stft
from vr_data.dsp.streaming import StreamingIstft, StreamingStft
from vr_data.errors import VRDataError
from vr_data.mixer.normalisation import InputNormalisation
from vr_model.inference.loading import separator_from_checkpoint
from vr_model.inference.masking import CropMasker, TorchMaskNetwork, crop_grid_frames, crossfade_window
from vr_model.inference.separate import SeparationOptions, Separator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("block", [1, 63, 1000, 10**6])
def test_streaming_stft_and_istft_equal_the_whole_song_transforms(center, pad_mode, block):
    config = StftConfig(n_fft=256, hop_length=64, center=center, pad_mode=pad_mode)
    audio = song(0.3, 44100, 2)[:, :13_001]
    analysis = StreamingStft(config)
    frames = np.concatenate([analysis.push(audio[:, at: at + block]) for at in range(0, audio.shape[1], block)]
                            + [analysis.finish()], axis=-1)
    expected = stft(audio, config)
    assert frames.shape == expected.shape
    np.testing.assert_array_equal(frames, expected)

    synthesis = StreamingIstft(config)
    step = max(1, block // 64)
    samples = np.concatenate([synthesis.push(expected[..., at: at + step]) for at in range(0, expected.shape[-1], step)]
                             + [synthesis.finish(audio.shape[1])], axis=1)
    np.testing.assert_allclose(samples, istft(expected, config, length=audio.shape[1]), rtol=0, atol=1e-6)


def test_streaming_stft_of_a_signal_shorter_than_the_padding():
    config = StftConfig(n_fft=256, hop_length=64, pad_mode="reflect")
    audio = song(0.01, 44100, 2)[:, :100]
    analysis = StreamingStft(config)
    frames = np.concatenate([analysis.push(audio[:, :40]), analysis.push(audio[:, 40:]), analysis.finish()], axis=-1)
    np.testing.assert_array_equal(frames, stft(audio, config))


def test_identity_model_reconstructs_the_song_to_60_db_across_block_boundaries():
    """The STFT, inverse STFT and block handling lose nothing (a mask of 1 cannot show how
    crops are weighted: the position-dependent tests below do)."""
    audio = song(2.0, 44100, 2)
    model_separator = separator(identity_model())
    for block in (4_999, 70_000):
        instrumental = model_separator.separate_audio(audio, 44100, block_samples=block)
        assert instrumental.shape == audio.shape
        assert snr_db(audio, instrumental) >= 60.0
        # No click anywhere: the largest error of any sample stays far below audibility.
        assert np.abs(instrumental - audio).max() < 1e-4


class PositionNetwork:
    """A mask that depends on where a frame sits in its crop (and on the channel and bin), so
    each crop covering a frame gives it another value: the song's mask then depends on which
    crops cover the frame and how they are weighted and placed."""

    channels, bins, max_frames = 2, STFT.bins, 64

    def __call__(self, magnitude):
        import torch

        _, channels, bins, frames = magnitude.shape
        position = torch.arange(frames, dtype=torch.float32) / max(frames - 1, 1)          # (T,)
        channel = torch.tensor([0.0, 0.15])[:channels, None, None]                        # (C, 1, 1)
        tilt = torch.linspace(0.0, 0.1, bins)[None, :, None]                               # (1, F, 1)
        mask = 0.2 + 0.5 * position[None, None, :] + channel + tilt                        # (C, F, T)
        return mask.expand(magnitude.shape[0], -1, -1, -1).contiguous()


def reference_pass_mask(frames: int, crop: int, overlap: float, offset: int = 0, swap: bool = False) -> np.ndarray:
    """One crop grid's mask `(2, bins, frames)`, frame by frame: crops start at offset + k * hop
    (the first clipped at frame 0 keeps its window's tail), the last is aligned to the end, and
    each frame is the window-weighted mean of the crops covering it."""
    import torch

    overlap_frames = min(int(round(crop * overlap)), crop - 1)
    hop = crop - overlap_frames
    window = crossfade_window(crop, overlap_frames)
    crops = []   # (first, stop, weights)
    start = offset
    while True:
        if start + crop > frames:
            first = max(frames - crop, 0)
            crops.append((first, frames, window[:frames - first]))
            break
        first = max(start, 0)
        crops.append((first, start + crop, window[first - start:]))
        if start + crop >= frames:
            break
        start += hop
    total, weight = np.zeros((2, STFT.bins, frames)), np.zeros(frames)
    for first, stop, weights in crops:
        mask = PositionNetwork()(torch.zeros(1, 2, STFT.bins, stop - first))[0].numpy()
        total[..., first:stop] += (mask[::-1] if swap else mask) * weights
        weight[first:stop] += weights
    return (total / weight).astype(np.float32)


@pytest.mark.parametrize("tta, overlap", [(False, 0.5), (False, 0.25), (True, 0.0), (True, 0.5)])
def test_a_position_dependent_mask_is_weighted_and_placed_as_the_reference_across_boundaries(tta, overlap):
    audio = song(1.0, 44100, 2, seed=6)
    spec = stft(audio, STFT)
    frames = spec.shape[-1]
    options = SeparationOptions(crop_frames=32, overlap=overlap, batch_size=3, tta=tta)
    model_separator = Separator(PositionNetwork(), InputNormalisation(), STFT, options)
    hop = 32 - min(int(round(32 * overlap)), 31)
    passes = [(0, False)] + ([(-(hop // 2), False), (0, True)] if tta else [])
    mask = np.mean([reference_pass_mask(frames, 32, overlap, offset, swap) for offset, swap in passes], axis=0)
    expected = istft(mask * spec, STFT, length=audio.shape[1])
    for block in (3_001, 70_000):
        instrumental = model_separator.separate_audio(audio, 44100, block_samples=block)
        np.testing.assert_allclose(instrumental, expected, rtol=0, atol=2e-5)
    # The swapped pass and the shift really moved the result (a wrong weight would show).
    plain = reference_pass_mask(frames, 32, overlap)
    assert np.abs(mask - plain).max() > (0.01 if tta else -1)


def test_block_size_changes_nothing_for_a_real_network_with_tta():
    audio = song(1.5, 44100, 2, seed=3)
    model_separator = separator(random_model(1), SeparationOptions(crop_frames=32, overlap=0.25, batch_size=2, tta=True))
    small = model_separator.separate_audio(audio, 44100, block_samples=1_000)
    whole = model_separator.separate_audio(audio, 44100, block_samples=10**7)
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-6)
    assert snr_db(audio, small) < 30.0   # the random mask really changed the song


def test_audio_path_equals_the_spectrogram_path():
    audio = song(1.0, 44100, 2, seed=4)
    model_separator = separator(random_model(2))
    from_audio = model_separator.separate_audio(audio, 44100, block_samples=2_000)
    spec = model_separator.instrumental_spectrogram(np.ascontiguousarray(stft(audio, STFT)))
    np.testing.assert_allclose(istft(spec, STFT, length=audio.shape[1]), from_audio, rtol=0, atol=1e-6)


def test_crop_masker_equals_a_direct_crop_by_crop_reference():
    """Crops on the grid, the last aligned to the end, Hann cross-fade normalised by the weights."""
    rng = np.random.default_rng(0)
    frames = 150
    spec = (rng.standard_normal((2, 129, frames)) + 1j * rng.standard_normal((2, 129, frames))).astype(np.complex64)
    model = random_model(5)
    network = TorchMaskNetwork(model)
    masker = CropMasker(network, InputNormalisation(), crop_frames=32, overlap=0.5, batch_size=4)
    got = np.concatenate([masker.push(spec[..., :70]), masker.push(spec[..., 70:]), masker.finish()], axis=-1)

    import torch

    window = crossfade_window(32, 16)
    mask_sum, weight_sum = np.zeros((2, 129, frames), np.float32), np.zeros(frames, np.float32)
    crops = crop_grid_frames(frames, 32, 0.5)
    assert crops[-1] == (frames - 32, frames) and crops[1][0] == 16
    for first, stop in crops:
        magnitude = InputNormalisation().apply(np.abs(spec[None, :, :, first:stop]))
        mask = network(torch.from_numpy(magnitude))[0].numpy()
        mask_sum[..., first:stop] += mask * window
        weight_sum[first:stop] += window
    np.testing.assert_allclose(got, (mask_sum / weight_sum) * spec, rtol=1e-5, atol=1e-6)
    assert masker.crops_run == len(crops)


def test_a_song_shorter_than_one_crop_is_one_short_crop():
    audio = song(0.05, 44100, 2)
    instrumental = separator(identity_model()).separate_audio(audio, 44100)
    assert instrumental.shape == audio.shape and snr_db(audio, instrumental) >= 60.0


def test_zero_mask_gives_silence_and_the_vocals_are_the_song(tmp_path):
    audio = song(1.0, 44100, 2)
    sf.write(tmp_path / "in.wav", audio.T, 44100, subtype="FLOAT")
    result = separator(constant_mask_model(-30.0)).separate_file(tmp_path / "in.wav", tmp_path / "out", subtype="FLOAT")
    instrumental, _ = sf.read(result.instrumental, dtype="float32", always_2d=True)
    vocals, _ = sf.read(result.vocals, dtype="float32", always_2d=True)
    assert np.abs(instrumental).max() < 1e-6
    np.testing.assert_allclose(vocals.T, audio, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate, channels, extension", [(44100, 1, "wav"), (22050, 2, "flac"), (48000, 2, "wav"),
                                                       (22050, 1, "ogg")])
def test_outputs_keep_the_songs_rate_channels_and_exact_length(tmp_path, rate, channels, extension):
    audio = song(1.3, rate, channels)[:, : int(1.3 * rate) - 7]   # not a whole number of hops
    path = tmp_path / f"song.{extension}"
    sf.write(path, audio.T, rate)
    written = sf.info(path)
    result = separator(identity_model()).separate_file(path, tmp_path / "out", subtype="FLOAT")
    assert result.instrumental.name == "song_instrumental.wav" and result.vocals.name == "song_vocals.wav"
    decoded, _ = sf.read(path, dtype="float32", always_2d=True)
    for output in (result.instrumental, result.vocals):
        info = sf.info(output)
        assert (info.samplerate, info.channels, info.frames) == (rate, channels, written.frames)
    instrumental, _ = sf.read(result.instrumental, dtype="float32", always_2d=True)
    vocals, _ = sf.read(result.vocals, dtype="float32", always_2d=True)
    # The two outputs sum to the decoded song (vocals = song - instrumental at the song's rate).
    np.testing.assert_allclose(instrumental + vocals, decoded, rtol=0, atol=1e-6)
    # Through the model's 44.1 kHz and back the identity model keeps the song (band-limited by
    # the resampler's passband at other rates).
    assert snr_db(decoded, instrumental) >= (60.0 if rate == 44100 else 25.0)
    assert list(tmp_path.joinpath("out").glob(".*")) == []   # no temporary files left


def test_pcm_outputs_are_clipped_not_wrapped(tmp_path):
    audio = np.clip(song(0.5, 44100, 2) * 2.5, -0.999, 0.999)
    sf.write(tmp_path / "loud.wav", audio.T, 44100, subtype="FLOAT")
    result = separator(constant_mask_model(30.0)).separate_file(tmp_path / "loud.wav", tmp_path / "out",
                                                                 format="flac", subtype="PCM_16")
    instrumental, _ = sf.read(result.instrumental, dtype="float32", always_2d=True)
    assert sf.info(result.instrumental).subtype == "PCM_16"
    assert snr_db(audio.T, instrumental) > 40.0


def test_bad_inputs_and_options_are_one_line_errors(tmp_path):
    model_separator = separator(identity_model())
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(VRDataError, match="bad.wav: cannot decode audio"):
        model_separator.separate_file(tmp_path / "bad.wav", tmp_path / "out")
    with pytest.raises(VRDataError, match="file not found"):
        model_separator.separate_file(tmp_path / "missing.wav", tmp_path / "out")
    sf.write(tmp_path / "four.wav", np.zeros((1000, 4), np.float32), 44100)
    with pytest.raises(VRDataError, match="4 channels"):
        model_separator.separate_file(tmp_path / "four.wav", tmp_path / "out")
    sf.write(tmp_path / "ok.wav", song(0.2, 44100, 2).T, 44100)
    with pytest.raises(VRDataError, match="flac files cannot hold FLOAT"):
        model_separator.separate_file(tmp_path / "ok.wav", tmp_path / "out", format="flac", subtype="FLOAT")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(VRDataError, match="cannot write the outputs of ok.wav"):
        model_separator.separate_file(tmp_path / "ok.wav", tmp_path / "a_file" / "out")
    (tmp_path / "taken" / "ok_vocals.wav").mkdir(parents=True)
    with pytest.raises(VRDataError, match="ok_vocals.wav: .*is a directory, not a regular file: refusing to replace it"):
        model_separator.separate_file(tmp_path / "ok.wav", tmp_path / "taken")
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["ok_vocals.wav"]   # nothing half-written
    with pytest.raises(VRDataError, match="crop_frames must be in 1..64"):
        separator(identity_model(), SeparationOptions(crop_frames=65)).separate_audio(song(0.2, 44100, 2), 44100)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_checkpoint_carries_the_normalisation_and_stft(tmp_path):
    model = random_model(3)
    write_checkpoint(tmp_path / "ckpt", model, InputNormalisation("none"))
    loaded = separator_from_checkpoint(tmp_path / "ckpt", options=OPTIONS)
    assert loaded.normalisation == InputNormalisation("none") and loaded.stft == STFT
    audio = song(0.7, 44100, 2)
    expected = separator(model, normalisation=InputNormalisation("none")).separate_audio(audio, 44100)
    np.testing.assert_array_equal(loaded.separate_audio(audio, 44100), expected)
    # Another normalisation is another input scale: the result must differ.
    assert np.abs(separator(model).separate_audio(audio, 44100) - expected).max() > 1e-4


def test_checkpoint_ema_weights_run_dir_and_default_normalisation(tmp_path):
    from vr_model.network.checkpoint import save_checkpoint

    raw, ema = random_model(3), random_model(4)
    # A run directory with one checkpoint that keeps both weights and records no normalisation
    # (not made by the trainer): the mixer's default, crop_max, applies.
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000010", raw, ema_state=ema.state_dict(),
                    extra_json={"stft": STFT.to_dict()})
    audio = song(0.5, 44100, 2)
    for weights, model in ((None, ema), ("ema", ema), ("raw", raw)):
        loaded = separator_from_checkpoint(tmp_path / "run", weights=weights, options=OPTIONS)
        assert loaded.normalisation == InputNormalisation("crop_max")
        np.testing.assert_array_equal(loaded.separate_audio(audio, 44100), separator(model).separate_audio(audio, 44100))
    with pytest.raises(VRDataError, match="weights must be"):
        separator_from_checkpoint(tmp_path / "run", weights="best")
    with pytest.raises(VRDataError, match="no CUDA device|auto, cpu, cuda or cuda:N"):
        separator_from_checkpoint(tmp_path / "run", device="tpu")


def test_a_pretraining_model_is_not_a_mask():
    from test_separate_support import SMALL

    with pytest.raises(VRDataError, match="not a mask"):
        TorchMaskNetwork(random_model(0, SMALL.replace(head="linear")))
