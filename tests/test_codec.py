"""vr_data.store.codec: round-trip quality and size, float16 range, layout, Zarr readback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vr_data.store.codec import (
    FLOAT16_MAX,
    CodecConfig,
    compressed_bytes,
    decode,
    decode_frames_major,
    decode_torch,
    encode,
    zarr_codecs,
    zarr_codecs_json,
)
from vr_data.errors import VRDataError
from vr_data.dsp.metrics import snr_db
from vr_data.dsp.stft import StftConfig, istft, stft
from vr_data.testing.synth import STYLES, music_like

SECONDS = 12.0
STFT = StftConfig()
MIN_SNR_DB = 40.0
MAX_GB_PER_STEREO_HOUR = 0.70


@pytest.fixture(scope="module")
def tracks() -> dict[str, np.ndarray]:
    """One synthetic stereo track per style (quiet, fading, sparse, soft-clipped loud...)."""
    return {style: music_like(SECONDS, STFT.sample_rate, seed=10 + index, style=style) for index, style in enumerate(STYLES)}


@pytest.fixture(scope="module")
def spectrograms(tracks) -> dict[str, np.ndarray]:
    return {style: stft(audio, STFT) for style, audio in tracks.items()}


def _round_trip(audio: np.ndarray, spec: np.ndarray, codec: CodecConfig) -> tuple[float, int]:
    stored = encode(spec, codec)
    restored = istft(decode(stored), STFT, length=audio.shape[1])
    return snr_db(audio, restored), compressed_bytes(stored, codec)


def test_default_codec_keeps_40_db_on_every_track_within_the_size_budget(tracks, spectrograms) -> None:
    codec = CodecConfig()
    total_bytes = 0
    for style, audio in tracks.items():
        snr, size = _round_trip(audio, spectrograms[style], codec)
        assert snr >= MIN_SNR_DB, f"{style}: {snr:.1f} dB"
        total_bytes += size
    hours = SECONDS * len(tracks) / 3600
    assert total_bytes / hours / 1e9 <= MAX_GB_PER_STEREO_HOUR


def _coloured_noise(rng: np.random.Generator, samples: int, exponent: float) -> np.ndarray:
    """Stereo noise with power falling as 1/f**exponent (0 white, 2 brown), RMS 0.2."""
    spectrum = np.fft.rfft(rng.standard_normal((2, samples)), axis=-1)
    spectrum /= np.maximum(np.arange(spectrum.shape[-1]), 1) ** (exponent / 2)
    noise = np.fft.irfft(spectrum, n=samples, axis=-1)
    return (0.2 * noise / noise.std()).astype(np.float32)


def test_default_codec_keeps_40_db_on_spectral_extremes() -> None:
    """Flat (white), bass-heavy (brown), one sub-bass sine, a DC offset under a tone."""
    rng = np.random.default_rng(7)
    samples = 4 * STFT.sample_rate
    time = np.arange(samples) / STFT.sample_rate
    signals = {
        "white": _coloured_noise(rng, samples, 0.0),
        "brown": _coloured_noise(rng, samples, 2.0),
        "sub_bass": np.stack([0.7 * np.sin(2 * np.pi * 41 * time), 0.5 * np.sin(2 * np.pi * 41 * time + 1)]),
        "dc_and_tone": np.stack([0.3 + 0.1 * np.sin(2 * np.pi * 440 * time)] * 2),
    }
    for name, audio in signals.items():
        audio = audio.astype(np.float32)
        snr, _ = _round_trip(audio, stft(audio, STFT), CodecConfig())
        assert snr >= MIN_SNR_DB, f"{name}: {snr:.1f} dB"


def test_quiet_passages_keep_their_own_snr(tracks, spectrograms) -> None:
    """Noise follows each block's level: the near-silent break of "mix" is not drowned."""
    audio, spec = tracks["mix"], spectrograms["mix"]
    restored = istft(decode(encode(spec)), STFT, length=audio.shape[1])
    samples = audio.shape[1]
    quiet = slice(int(0.51 * samples), int(0.54 * samples))  # inside the -65 dB break
    assert np.max(np.abs(audio[:, quiet])) < 1e-2
    assert snr_db(audio[:, quiet], restored[:, quiet]) >= 35.0


def test_f16_is_exactly_the_float16_cast(spectrograms) -> None:
    spec = spectrograms["mix"]
    stored = encode(spec, CodecConfig(name="f16"))
    assert stored.dtype == np.float16 and stored.shape == (spec.shape[2], spec.shape[0], 2, spec.shape[1])
    restored = decode(stored)
    np.testing.assert_array_equal(restored.real, spec.real.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(restored.imag, spec.imag.astype(np.float16).astype(np.float32))
    assert CodecConfig(name="f16").lossless and not CodecConfig().lossless


def test_layout_is_frames_major_re_im(spectrograms) -> None:
    spec = spectrograms["loud"][:, :, :50]
    stored = encode(spec, CodecConfig(name="f16"))
    np.testing.assert_array_equal(stored[7, 1, 0], spec[1, :, 7].real.astype(np.float16))
    np.testing.assert_array_equal(stored[7, 1, 1], spec[1, :, 7].imag.astype(np.float16))


def test_encoding_is_per_frame_so_pieces_equal_the_whole(spectrograms) -> None:
    spec = spectrograms["fade"]
    whole = encode(spec)
    pieces = np.concatenate([encode(spec[:, :, :100]), encode(spec[:, :, 100:])])
    np.testing.assert_array_equal(whole, pieces)


def test_silence_is_exact_zero_and_quantised_blocks_compress(spectrograms) -> None:
    spec = spectrograms["sparse"]
    stored = encode(spec)
    silent_frames = np.all(spec == 0, axis=(0, 1))
    assert silent_frames.any(), "the sparse track starts with digital silence"
    assert np.all(stored[silent_frames] == 0)
    # Steps are powers of two, so every stored value is exact in float16 and has a short mantissa:
    # under the same lossless stage, quantised blocks compress far better than plain float16.
    for compressor, ratio in (("blosc-zstd", 0.6), ("blosc-lz4hc", 0.7)):
        quantised = CodecConfig(compressor=compressor)
        lossless = CodecConfig(name="f16", compressor=compressor)
        assert compressed_bytes(stored, quantised) < ratio * compressed_bytes(encode(spec, lossless), lossless)


def test_float16_overflow_is_clamped_or_refused() -> None:
    rng = np.random.default_rng(5)
    spec = (rng.standard_normal((2, 1025, 8)) + 1j * rng.standard_normal((2, 1025, 8))).astype(np.complex64)
    spec[0, 3, 2] = 1e6 - 2e6j
    for codec in (CodecConfig(), CodecConfig(name="f16"), CodecConfig(name="f16-bits")):
        stored = encode(spec, codec)
        assert np.isfinite(stored).all()
        # Saturated at float16's maximum (f16-bits: the largest value its mantissa can hold).
        assert FLOAT16_MAX * (1 - 2.0**-5) <= stored[2, 0, 0, 3] <= FLOAT16_MAX
        assert stored[2, 0, 1, 3] == -stored[2, 0, 0, 3]
        with pytest.raises(VRDataError, match="float16 range"):
            encode(spec, codec, strict=True)
    with pytest.raises(VRDataError, match="non-finite"):
        encode(np.full((1, 1025, 2), np.nan, dtype=np.complex64))


def test_tiny_levels_do_not_underflow_to_garbage(tracks) -> None:
    """A track 120 dB down still round-trips; far below float16's range it becomes zeros, never NaN."""
    audio = tracks["mix"][:, : 5 * STFT.sample_rate]
    for gain_db, min_snr in ((-120.0, MIN_SNR_DB), (-200.0, None)):
        quiet = (audio * 10 ** (gain_db / 20)).astype(np.float32)
        stored = encode(stft(quiet, STFT))
        assert np.isfinite(stored).all()
        restored = istft(decode(stored), STFT, length=quiet.shape[1])
        if min_snr is not None:
            assert snr_db(quiet, restored) >= min_snr
        else:
            assert np.max(np.abs(restored)) <= 2 * np.max(np.abs(quiet)) + 1e-7


def test_fixed_mantissa_rounding_keeps_the_requested_bits(spectrograms) -> None:
    spec = spectrograms["loud"]
    stored = encode(spec, CodecConfig(name="f16-bits", mantissa_bits=5))
    assert np.all(stored.view(np.uint16) & np.uint16(0b11111) == 0)  # 10 - 5 dropped bits
    exact = encode(spec, CodecConfig(name="f16")).astype(np.float32)
    normal = np.abs(exact) >= np.finfo(np.float16).tiny
    relative = np.abs(stored.astype(np.float32)[normal] - exact[normal]) / np.abs(exact[normal])
    assert relative.max() <= 2.0**-6 + 1e-6  # half a unit in the 5th bit


def test_decode_variants_agree(spectrograms) -> None:
    stored = encode(spectrograms["mix"][:, :, :300])
    spec = decode(stored)
    assert spec.dtype == np.complex64 and spec.shape == (2, 1025, 300)
    buffer = np.empty((300, 2, 1025), dtype=np.complex64)
    assert decode_frames_major(stored, out=buffer) is buffer
    np.testing.assert_array_equal(buffer.transpose(1, 2, 0), spec)
    with pytest.raises(ValueError):
        decode_frames_major(stored, out=np.empty((300, 2, 1024), dtype=np.complex64))
    torch = pytest.importorskip("torch")
    batch = torch.from_numpy(np.stack([stored, stored]))
    np.testing.assert_array_equal(decode_torch(batch)[1].numpy(), spec)


def test_config_round_trips_and_validates() -> None:
    codec = CodecConfig(name="f16-bits", mantissa_bits=4, compressor="zstd", level=3)
    assert CodecConfig.from_dict(json.loads(json.dumps(codec.to_dict()))) == codec
    for bad in ({"name": "mp3"}, {"compressor": "lz77"}, {"shuffle": "twice"}, {"mantissa_bits": 11}, {"target_snr_db": 0}):
        with pytest.raises(VRDataError):
            CodecConfig(**bad)
    with pytest.raises(VRDataError):
        CodecConfig.from_dict({"name": "f16", "bits": 3})


@pytest.mark.parametrize("codec", [CodecConfig(), CodecConfig(compressor="zstd")], ids=["blosc-zstd", "zstd"])
def test_zarr_python_and_tensorstore_read_each_others_sharded_arrays(tmp_path, spectrograms, codec) -> None:
    zarr = pytest.importorskip("zarr")
    tensorstore = pytest.importorskip("tensorstore")
    stored = encode(spectrograms["mix"][:, :, :200], codec)  # (200, 2, 2, 1025)
    shard, inner = (128, 2, 2, 1025), (32, 2, 2, 1025)

    written_by_zarr = zarr.create_array(
        store=str(tmp_path / "by_zarr.zarr"), shape=stored.shape, dtype="float16", chunks=inner, shards=shard, **zarr_codecs(codec)
    )
    written_by_zarr[:] = stored
    by_tensorstore = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "by_zarr.zarr")}}).result()
    np.testing.assert_array_equal(by_tensorstore.read().result(), stored)
    np.testing.assert_array_equal(by_tensorstore[40:90].read().result(), stored[40:90])

    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(tmp_path / "by_ts.zarr")},
        "metadata": {
            "shape": list(stored.shape),
            "data_type": "float16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shard)}},
            "codecs": zarr_codecs_json(codec, inner_chunk_shape=inner),
        },
        "create": True,
    }
    written_by_tensorstore = tensorstore.open(spec).result()
    written_by_tensorstore.write(stored).result()
    by_zarr = zarr.open_array(str(tmp_path / "by_ts.zarr"), mode="r")
    np.testing.assert_array_equal(by_zarr[:], stored)
    assert compressed_bytes(stored, codec) < stored.nbytes


def test_float16_conversion_matches_numpy_exhaustively() -> None:
    from vr_data.store.codec import to_float16

    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)].astype(np.float32)
    halfway = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)  # ties to even
    values = np.concatenate([
        finite, halfway, np.nextafter(finite, np.float32(np.inf)), np.nextafter(finite, np.float32(-np.inf)),
        np.random.default_rng(0).standard_normal(200_000).astype(np.float32) * 3000,
        np.array([70000, -70000, 65519, 65520, 1e-9, 3e-8, 6e-8, np.inf, -np.inf], np.float32),
    ])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(to_float16(values).view(np.uint16), expected)


def test_fused_quantiser_meets_every_block_target_and_agrees_with_the_reference() -> None:
    from vr_data.store.codec import FLOAT16_MAX, _audio_energy, _quantise_blocks

    rng = np.random.default_rng(9)
    spec = (rng.standard_normal((2, 1025, 200)) * 30 + 1j * rng.standard_normal((2, 1025, 200))).astype(np.complex64)
    spec[:, :, :30] *= 1e-5  # a near-silent passage
    spec[:, :, 30:35] = 0
    spec[:, :40, 100:120] *= 500  # loud bass
    codec = CodecConfig()
    stored = encode(spec, codec)
    components = np.empty((200, 2, 2, 1025), np.float32)
    components[:, :, 0], components[:, :, 1] = spec.transpose(2, 0, 1).real, spec.transpose(2, 0, 1).imag
    reference = components.copy()
    _quantise_blocks(reference, codec.target_snr_db)
    reference = np.clip(reference, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    agreement = np.mean(np.all(stored == reference, axis=(2, 3)))
    assert agreement >= 0.999  # vectorised sums may flip a borderline step choice, nothing more
    error = _audio_energy(components - stored.astype(np.float32))
    allowed = _audio_energy(components) * 10 ** (-codec.target_snr_db / 10)
    assert np.all(error <= allowed * (1 + 1e-6))
