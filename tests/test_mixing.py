"""Mixing kernel and epoch plans: exact complex mixing, determinism, no duplicates, equal batches."""

from __future__ import annotations

import numpy as np
import pytest

from vr_data.mixer.kernels import complex_from_stored, crop_level_dbfs, mix_complex, mix_magnitudes
from vr_data.mixer.sampling import KINDS, crop_cells, example_rng, plan_epoch


def _stored(rng, frames=40, bins=33):
    return (rng.standard_normal((frames, 2, 2, bins)) * 3).astype(np.float16)


def test_kernel_matches_complex_reference_for_every_augmentation():
    rng = np.random.default_rng(0)
    instrumental, vocal = _stored(rng), _stored(rng)
    inst_c, voc_c = complex_from_stored(instrumental), complex_from_stored(vocal)
    for swap_a in (False, True):
        for swap_vocal in (False, True):
            for mono in (False, True):
                gains = (0.7, -0.0) if mono else (-1.3, 0.4)
                mixture, target, _ = mix_magnitudes(instrumental, vocal=vocal, vocal_gain=gains, swap_main=swap_a,
                                                  swap_vocal=swap_vocal, mono=mono)
                a = inst_c[::-1] if swap_a else inst_c
                v = voc_c[::-1] if swap_vocal else voc_c
                mix_c = a + np.array(gains, np.float32)[:, None, None] * v
                tgt_c = a
                if mono:
                    mix_c = np.repeat(mix_c.mean(0, keepdims=True), 2, 0)
                    tgt_c = np.repeat(tgt_c.mean(0, keepdims=True), 2, 0)
                np.testing.assert_allclose(mixture, np.abs(mix_c), rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(target, np.abs(tgt_c), rtol=1e-5, atol=1e-5)
                ref_mix, ref_target = mix_complex(instrumental, vocal=vocal, vocal_gain=gains, swap_main=swap_a,
                                                  swap_vocal=swap_vocal, mono=mono)
                np.testing.assert_allclose(ref_mix, mix_c, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(ref_target, tgt_c, rtol=1e-5, atol=1e-5)


def test_pair_mode_uses_the_stored_target():
    rng = np.random.default_rng(1)
    mixture_in, instrumental = _stored(rng), _stored(rng)
    mixture, target, peak = mix_magnitudes(mixture_in, instrumental, swap_main=True)
    assert peak == mixture.max()
    np.testing.assert_allclose(mixture, np.abs(complex_from_stored(mixture_in))[::-1], rtol=1e-6)
    np.testing.assert_allclose(target, np.abs(complex_from_stored(instrumental))[::-1], rtol=1e-6)


def test_kernel_refuses_wrong_layout():
    with pytest.raises(ValueError, match="float16"):
        mix_magnitudes(np.zeros((4, 2, 2, 5), np.float32))


def test_crop_level_follows_audio_rms():
    from vr_data.store.codec import CodecConfig, encode
    from vr_data.dsp.stft import StftConfig, stft

    config = StftConfig(n_fft=512, hop_length=128)
    t = np.arange(44100) / 44100
    audio = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.1  # -23 dBFS RMS
    stored = encode(stft(audio, config), CodecConfig(name="f16"))
    window_energy = float(np.sum(np.hanning(513)[:-1] ** 2))
    assert abs(crop_level_dbfs(stored, window_energy) - 20 * np.log10(0.1 / np.sqrt(2))) < 1.0
    assert crop_level_dbfs(np.zeros_like(stored), window_energy) == float("-inf")


def test_crop_cells_tile_tracks_without_padding_when_possible():
    cells = crop_cells(np.array([10, 256, 600]), 256)
    assert cells.track.tolist() == [0, 1, 2, 2, 2]
    assert cells.start.tolist() == [0, 0, 0, 256, 344]  # last cell ends at the track end


def test_plan_is_pure_and_cells_are_distinct_within_an_epoch():
    cells = {"pair": 50, "augmented": 70, "pretrain": 0}
    first = plan_epoch(7, 3, {"pair": 0.5, "augmented": 0.5}, cells, 100, 4, 2)
    again = plan_epoch(7, 3, {"pair": 0.5, "augmented": 0.5}, cells, 100, 4, 2)
    other = plan_epoch(7, 4, {"pair": 0.5, "augmented": 0.5}, cells, 100, 4, 2)
    assert np.array_equal(first.kinds, again.kinds) and np.array_equal(first.cell, again.cell)
    assert not np.array_equal(first.cell, other.cell)
    for position, kind in enumerate(KINDS):
        used = first.cell[first.kinds == position]
        assert len(set(used.tolist())) == used.size  # no cell twice (fewer examples than cells)


def test_every_rank_gets_the_same_number_of_batches_and_disjoint_examples():
    plan = plan_epoch(0, 0, {"pair": 1.0}, {"pair": 1000}, 999, 8, 3)
    assert plan.batches_per_rank == 999 // 24
    seen = []
    for rank in range(3):
        for k in range(plan.batches_per_rank):
            seen.extend(plan.example_indices(rank, k))
    assert len(seen) == len(set(seen)) == plan.batches_per_rank * 24


def test_example_rng_is_a_function_of_its_coordinates():
    assert example_rng(1, 2, 3).random() == example_rng(1, 2, 3).random()
    assert example_rng(1, 2, 3).random() != example_rng(1, 2, 4).random()
    assert example_rng(1, 2, 3).random() != example_rng(1, 3, 3).random()


def test_complex_mixing_is_exact_in_audio():
    """Mixing stored spectrograms equals the spectrogram of the mixed audio: mixture - vocal = instrumental."""
    from vr_data.store.codec import CodecConfig, encode
    from vr_data.testing.demo import instrumental_track, vocal_track
    from vr_data.dsp.stft import StftConfig, istft, stft

    config = StftConfig(n_fft=512, hop_length=128)
    instrumental = instrumental_track(1.0, 44100, seed=3)
    vocal = vocal_track(1.0, 44100, seed=3)
    lossless = CodecConfig(name="f16")
    inst_stored, voc_stored = encode(stft(instrumental, config), lossless), encode(stft(vocal, config), lossless)
    gain = 0.5
    mixture, target = mix_complex(inst_stored, vocal=voc_stored, vocal_gain=(gain, gain))
    mixture_audio = istft(mixture, config, length=instrumental.shape[1])
    vocal_audio = istft(complex_from_stored(voc_stored), config, length=vocal.shape[1])
    instrumental_audio = istft(target, config, length=instrumental.shape[1])
    np.testing.assert_allclose(mixture_audio - gain * vocal_audio, instrumental_audio, atol=1e-5)
    # and the stored mixture is within float16 precision of the STFT of the mixed audio
    direct = stft(instrumental + gain * vocal, config)
    assert np.max(np.abs(direct - mixture)) < 1e-2 * np.max(np.abs(direct))


def test_normalise_divides_by_the_mixture_peak_and_clips_the_target():
    rng = np.random.default_rng(4)
    instrumental, vocal = _stored(rng), _stored(rng)
    raw_mixture, raw_target, peak = mix_magnitudes(instrumental, vocal=vocal, vocal_gain=(-1.0, -1.0))
    mixture, target, same_peak = mix_magnitudes(instrumental, vocal=vocal, vocal_gain=(-1.0, -1.0), normalise=True)
    assert same_peak == peak == raw_mixture.max()
    np.testing.assert_allclose(mixture, raw_mixture / peak, rtol=1e-6)
    np.testing.assert_allclose(target, np.minimum(raw_target / peak, 1.0), rtol=1e-6)
    assert target.max() <= 1.0 and abs(mixture.max() - 1.0) < 1e-6


def test_kernel_converts_every_finite_float16_exactly():
    """Subnormals, signed zeros and the largest values: with the imaginary part zero, a magnitude
    is |re| exactly (the square of an 11-bit mantissa is exact in float32)."""
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    bins = 33
    frames = -(-finite.size // (2 * bins))
    real = np.zeros(frames * 2 * bins, np.float16)
    real[: finite.size] = finite
    stored = np.zeros((frames, 2, 2, bins), np.float16)
    stored[:, :, 0, :] = real.reshape(frames, 2, bins)
    _, target, _ = mix_magnitudes(np.zeros_like(stored), stored)
    expected = np.abs(stored[:, :, 0, :].astype(np.float32)).transpose(1, 2, 0)
    np.testing.assert_array_equal(target, expected)
