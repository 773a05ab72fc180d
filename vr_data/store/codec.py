"""Storage codecs for complex spectrograms: float16 real/imag, optionally quantised, then lossless.

Stored layout is frames-major float16 `(frames, channels, 2, bins)` with `[re, im]` on axis 2,
so a crop of frames is one contiguous run of a Zarr chunk. Every codec's output is plain
float16: whatever quantisation happened at encode time, a reader (zarr-python, tensorstore, a
GPU kernel) only casts float16 to float32. The lossless stage is a standard Zarr v3 codec
(blosc with byte shuffle and lz4hc by default, or zstd) followed by a crc32c checksum per
chunk, given by `zarr_codecs`/`zarr_codecs_json`.

Codecs (`CodecConfig.name`):
- "f16"      float16 cast only: lossless w.r.t. float16, about 1.1x compression.
- "f16-q"    (default) per-frame, per-channel quantisation: each (frame, channel) block is
             rounded to multiples of a power-of-two step, the largest step that keeps that
             block's own spectral SNR >= `target_snr_db`. Noise thus follows each block's level
             (quiet fades and near-silent passages keep their own SNR), values below half a
             step become exact zeros, and multiples of a power of two are exact in float16 with
             short mantissas, which byte shuffle + zstd compress well.
- "f16-bits" fixed mantissa rounding to `mantissa_bits` bits (relative, per value); kept for
             comparison: cheaper but noise is relative to each value, not to the block.

Float16 range: |re|, |im| above 65504 (float16 max; a full-scale sine gives about 512 with
the default STFT, so this takes audio about 40 dB over full scale) are clamped to +-65504, and
`encode(..., strict=True)` raises instead. Steps never go below 2**-24, the smallest float16
subnormal, so quantised values never underflow; blocks quieter than about -140 dBFS are
rounded on that grid.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields

import numpy as np
from numba import njit

from vr_data.errors import VRDataError

CODECS = ("f16-q", "f16", "f16-bits")
DEFAULT_CODEC_NAME = "f16-q"  # the codec (quantiser) name; the store default config is store.build.DEFAULT_CODEC
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
FLOAT16_MAX_F32 = np.float32(FLOAT16_MAX)
MIN_STEP_EXPONENT = -24  # 2**-24 is the smallest float16 subnormal
_SHUFFLES = ("noshuffle", "shuffle", "bitshuffle")
_COMPRESSORS = ("blosc-zstd", "blosc-lz4hc", "blosc-lz4", "zstd")
CHUNK_CHECKSUM_JSON = {"name": "crc32c"}  # the Zarr v3 checksum codec, last in every chunk's chain


@dataclass(frozen=True)
class CodecConfig:
    """How spectrograms are stored; `store.json` keeps `to_dict()`.

    `target_snr_db`: minimum spectral SNR of every (frame, channel) block for "f16-q". The
    inverse STFT averages independent rounding errors of overlapping frames, so the audio SNR
    comes out higher: measured here 3 to 6 dB over the target (white, pink, brown noise, pure
    tones from 20 Hz to 21 kHz, synthetic music), hence the default 39 for a 40 dB floor. `mantissa_bits`: kept bits for
    "f16-bits". `compressor`, `level`, `shuffle`: the lossless Zarr stage: blosc with byte
    shuffle and lz4hc (default: decodes about 3x faster than zstd, the mixer reads two 2 MB
    chunks per example; measured 0.52 GB per stereo audio-hour with f16-q), "blosc-zstd" (about
    25% smaller: 0.39 GB/h), "blosc-lz4", or plain "zstd"; `shuffle` applies to blosc only.
    """

    name: str = DEFAULT_CODEC_NAME
    target_snr_db: float = 39.0
    mantissa_bits: int = 5
    compressor: str = "blosc-lz4hc"
    level: int = 5
    shuffle: str = "shuffle"

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise VRDataError(None, f"unknown codec {self.name!r} (one of {', '.join(CODECS)})")
        if self.compressor not in _COMPRESSORS:
            raise VRDataError(None, f"unknown compressor {self.compressor!r} (one of {', '.join(_COMPRESSORS)})")
        if self.shuffle not in _SHUFFLES:
            raise VRDataError(None, f"unknown shuffle {self.shuffle!r} (one of {', '.join(_SHUFFLES)})")
        if not 0 <= self.mantissa_bits <= 10:
            raise VRDataError(None, f"mantissa_bits must be 0..10 (float16 has 10), got {self.mantissa_bits}")
        if not 0 < self.target_snr_db < 120:
            raise VRDataError(None, f"target_snr_db must be in (0, 120) dB, got {self.target_snr_db}")

    @property
    def lossless(self) -> bool:
        """True when decode(encode(x)) equals x cast to float16."""
        return self.name == "f16"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CodecConfig":
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise VRDataError(None, f"unknown codec config keys: {', '.join(sorted(unknown))}")
        return cls(**values)


def encode(spec: np.ndarray, codec: CodecConfig = CodecConfig(), *, strict: bool = False) -> np.ndarray:
    """Float16 `(frames, channels, 2, bins)` to store, from complex `(channels, bins, frames)`.

    Per-frame work only, so encoding a track in pieces gives the same frames as encoding it
    whole. Magnitudes beyond float16 range are clamped (`strict=True` raises VRDataError).
    """
    spec = np.asarray(spec)
    if spec.ndim != 3 or not np.iscomplexobj(spec):
        raise ValueError(f"spectrogram must be complex (channels, bins, frames), got {spec.dtype} {spec.shape}")
    # (frames, channels, 2, bins) float32: the one copy that changes the layout.
    components = np.empty((spec.shape[2], spec.shape[0], 2, spec.shape[1]), dtype=np.float32)
    spec_frames_major = spec.transpose(2, 0, 1)
    components[:, :, 0] = spec_frames_major.real
    components[:, :, 1] = spec_frames_major.imag
    return encode_components(components, codec, strict=strict)


def encode_components(
    components: np.ndarray, codec: CodecConfig = CodecConfig(), *, strict: bool = False
) -> np.ndarray:
    """`encode` of float32 `(frames, channels, 2, bins)` already in the stored layout (modified in place)."""
    peak = float(np.max(np.abs(components))) if components.size else 0.0
    if not np.isfinite(peak):
        raise VRDataError(None, "spectrogram has non-finite values")
    if peak > FLOAT16_MAX:
        if strict:
            raise VRDataError(None, f"spectrogram peak {peak:.4g} exceeds float16 range {FLOAT16_MAX:g}")
        np.clip(components, -FLOAT16_MAX, FLOAT16_MAX, out=components)
    if codec.name == "f16-q":
        # One fused pass per (frame, channel) block: the numpy reference is `_quantise_blocks`.
        stored = np.empty(components.shape, np.uint16)
        _quantise_blocks_to_f16(np.ascontiguousarray(components), float(codec.target_snr_db), stored)
        return stored.view(np.float16)
    if codec.name == "f16-bits":
        return _round_mantissa(to_float16(components), codec.mantissa_bits)
    return to_float16(components)


def to_float16(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 with round-to-nearest-even, as numpy's cast but vectorised (numpy's
    float16 cast is scalar code, the slowest step of an encode)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty(values.shape, np.uint16)
    _f32_bits_to_f16_bits(values.reshape(-1).view(np.uint32), out.reshape(-1))
    return out.view(np.float16)


@njit(cache=True, inline="always")
def _f16_bits(u):
    """float16 bit pattern of the float32 with bit pattern `u` (round to nearest even)."""
    sign = (u >> 16) & 0x8000
    exponent = (u >> 23) & 0xFF
    mantissa = u & 0x7FFFFF
    if exponent == 0xFF:  # inf / nan
        return sign | 0x7C00 | (0x200 if mantissa else 0)
    e = np.int64(exponent) - 112  # rebias 127 -> 15
    if e >= 31:
        return sign | 0x7C00
    if e <= 0:
        if e < -10:
            return sign
        mantissa |= 0x800000
        shift = 14 - e
        half = mantissa >> shift
        remainder = mantissa & ((1 << shift) - 1)
        halfway = 1 << (shift - 1)
        if remainder > halfway or (remainder == halfway and (half & 1)):
            half += 1
        return sign | half
    half = sign | (e << 10) | (mantissa >> 13)
    remainder = mantissa & 0x1FFF
    if remainder > 0x1000 or (remainder == 0x1000 and (half & 1)):
        half += 1  # a carry into the exponent is the right result (or inf past 65504)
    return half


@njit(cache=True, nogil=True)
def _f32_bits_to_f16_bits(bits, out):
    for position in range(bits.size):
        out[position] = _f16_bits(np.uint32(bits[position]))


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _quantise_blocks_to_f16(components, target_snr_db, out):
    """`_quantise_blocks` + clip + float16 cast of float32 `(frames, channels, 2, bins)`, block by
    block while the block is in cache; writes float16 bit patterns into uint16 `out`."""
    frames, channels, _, bins = components.shape
    allowed_fraction = 10.0 ** (-target_snr_db / 10.0)
    scratch = np.empty(2 * bins, np.float32)
    scratch_bits = scratch.view(np.uint32)
    for f in range(frames):
        for c in range(channels):
            energy = 0.0
            for part in range(2):
                for k in range(bins):
                    value = np.float64(components[f, c, part, k])
                    weight = 0.5 if (k == 0 or k == bins - 1) else 1.0
                    energy += weight * value * value
            allowed = energy * allowed_fraction
            if allowed > 0.0:
                exponent = np.floor(np.log2(np.sqrt(12.0 * allowed / (2 * bins))))
                exponent = min(max(exponent, MIN_STEP_EXPONENT), 15.0)
            else:
                exponent = float(MIN_STEP_EXPONENT)
            chosen = exponent
            for extra in range(1, 4):
                trial = exponent + extra
                step = np.float32(2.0**trial)
                inverse = np.float32(1.0) / step
                error = 0.0
                for part in range(2):
                    for k in range(bins):
                        value = components[f, c, part, k]
                        difference = np.float64(value - np.rint(value * inverse) * step)
                        weight = 0.5 if (k == 0 or k == bins - 1) else 1.0
                        error += weight * difference * difference
                if error <= allowed:
                    chosen = trial
            step = np.float32(2.0**chosen)
            inverse = np.float32(1.0) / step
            for part in range(2):
                for k in range(bins):
                    rounded = np.rint(components[f, c, part, k] * inverse) * step
                    scratch[part * bins + k] = min(max(rounded, -FLOAT16_MAX_F32), FLOAT16_MAX_F32)
            for part in range(2):
                for k in range(bins):
                    out[f, c, part, k] = _f16_bits(scratch_bits[part * bins + k])


def _quantise_blocks(components: np.ndarray, target_snr_db: float) -> None:
    """Round each (frame, channel) block of float32 `(frames, channels, 2, bins)` in place.

    The numpy reference of the fused kernel `_quantise_blocks_to_f16` (tests compare them bit
    for bit); the kernel does the same arithmetic block by block.

    The step is a power of two: multiples of it are exact in float16 (for |multiple| < 2048)
    and have trailing-zero mantissas. Uniform rounding with step s adds at most s^2/12 noise
    per value, so the start is the step that would meet the target in that worst case; then
    up to three larger steps are tried per block, keeping the largest whose measured error
    still meets the target (spectra are peaky: most values round to zero with an error far
    below s^2/12).
    """
    frames, channels, _, bins = components.shape
    energy = _audio_energy(components)  # (frames, channels)
    allowed = energy * 10.0 ** (-target_snr_db / 10.0)  # error energy each block may take
    with np.errstate(divide="ignore"):
        worst_case_step = np.sqrt(12.0 * allowed / (2 * bins))
        exponent = np.floor(np.log2(worst_case_step))
    exponent = np.clip(np.nan_to_num(exponent, neginf=MIN_STEP_EXPONENT), MIN_STEP_EXPONENT, 15)
    chosen = exponent.copy()
    error = np.empty_like(components)
    for extra in (1, 2, 3):
        trial = exponent + extra
        step = np.exp2(trial).astype(np.float32)[:, :, None, None]
        np.multiply(components, 1 / step, out=error)  # scaling by a power of two is exact
        np.rint(error, out=error)
        error *= step
        np.subtract(components, error, out=error)
        error_energy = _audio_energy(error)
        chosen = np.where(error_energy <= allowed, trial, chosen)
    step = np.exp2(chosen).astype(np.float32)[:, :, None, None]
    components *= 1 / step
    np.rint(components, out=components)
    components *= step


def _audio_energy(components: np.ndarray) -> np.ndarray:
    """Energy per (frame, channel) of float32 `(frames, channels, 2, bins)`, float64 `(frames, channels)`.

    Weighted as the inverse real FFT weighs a one-sided spectrum: DC and Nyquist count half as
    much as the other bins (which stand for two conjugate bins). Unweighted, bass-heavy audio
    (most energy at DC) came out 1 dB under its target after the inverse STFT.
    """
    energy = np.einsum("fcrb,fcrb->fc", components, components, dtype=np.float64)
    edges = components[..., [0, -1]].astype(np.float64)
    return energy - 0.5 * np.einsum("fcre,fcre->fc", edges, edges)


def _round_mantissa(stored: np.ndarray, bits: int) -> np.ndarray:
    """Round float16 values to `bits` mantissa bits (ties to even), as numcodecs' BitRound."""
    if bits >= 10:
        return stored
    drop = 10 - bits
    raw = stored.view(np.uint16)
    half = np.uint16((1 << (drop - 1)) - 1)
    keep_lsb = (raw >> np.uint16(drop)) & np.uint16(1)
    mask = np.uint16((0xFFFF << drop) & 0xFFFF)
    rounded = ((raw + half + keep_lsb) & mask).astype(np.uint16).view(np.float16)
    # Rounding up the largest finite values carries into the exponent and gives inf: truncate those.
    overflowed = np.isinf(rounded) & np.isfinite(stored)
    if overflowed.any():
        rounded[overflowed] = (raw[overflowed] & mask).view(np.float16)
    return rounded


def decode(stored: np.ndarray) -> np.ndarray:
    """Complex64 `(channels, bins, frames)` from stored float16 `(frames, channels, 2, bins)`.

    A transposed view of `decode_frames_major`'s C-contiguous buffer (no extra copy); call
    `np.ascontiguousarray` if a consumer needs C order.
    """
    return decode_frames_major(stored).transpose(1, 2, 0)


def decode_frames_major(stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Complex64 `(frames, channels, bins)` from float16 `(frames, channels, 2, bins)`.

    The float16 -> float32 cast is the only work. `out`, if given, is a C-contiguous complex64
    buffer of that shape to fill (a mixer can reuse one per batch slot).
    """
    stored = np.asarray(stored)
    if stored.ndim != 4 or stored.shape[2] != 2:
        raise ValueError(f"stored spectrogram must be (frames, channels, 2, bins), got {stored.shape}")
    frames, channels, _, bins = stored.shape
    if out is None:
        out = np.empty((frames, channels, bins), dtype=np.complex64)
    elif out.shape != (frames, channels, bins) or out.dtype != np.complex64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous complex64 {(frames, channels, bins)}, got {out.dtype} {out.shape}")
    interleaved = out.view(np.float32).reshape(frames, channels, bins, 2)  # [re, im] pairs
    if stored.dtype == np.float16:
        # numpy's float16 cast is scalar code; a 256 KiB table lookup is about 1.5x faster here.
        bits = stored.view(np.uint16)
        interleaved[..., 0] = np.take(_float16_table(), bits[:, :, 0])
        interleaved[..., 1] = np.take(_float16_table(), bits[:, :, 1])
    else:
        interleaved[..., 0] = stored[:, :, 0]
        interleaved[..., 1] = stored[:, :, 1]
    return out


@functools.lru_cache(maxsize=1)
def _float16_table() -> np.ndarray:
    """float32 value of every float16 bit pattern, `(65536,)`."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def decode_torch(stored):
    """Torch complex64 `(..., channels, bins, frames)` from a float16 tensor `(..., frames, channels, 2, bins)`.

    For decoding on the GPU after moving the (half as large) float16 crop there.
    """
    import torch

    real = stored.select(-2, 0).float()
    imag = stored.select(-2, 1).float()
    spec = torch.complex(real, imag)  # (..., frames, channels, bins)
    return spec.movedim(-3, -1)


# ---------------------------------------------------------------------------- lossless Zarr stage


def zarr_codecs_json(codec: CodecConfig = CodecConfig(), inner_chunk_shape: tuple[int, ...] | None = None) -> list[dict]:
    """The Zarr v3 `codecs` metadata list for a float16 array stored with `codec`.

    Accepted as is by tensorstore's zarr3 driver (`"metadata": {"codecs": ...}`) and by
    zarr-python. With `inner_chunk_shape`, the list is one `sharding_indexed` codec whose inner
    chunks use the codec (the array's chunk shape is then the shard shape); its index codecs
    are zarr-python's defaults, so both libraries write the same kind of shard.

    Every chunk ends with a `crc32c` checksum of its compressed bytes, checked on every read (by
    tensorstore and zarr-python alike): a flipped bit in a chunk is a read error, never changed
    values. The shard index has its own (zarr-python's default). The cost is 4 bytes per chunk
    and a hardware CRC over the compressed bytes (measured in docs/performance.md).
    """
    inner = [{"name": "bytes", "configuration": {"endian": "little"}}, _compressor_json(codec), CHUNK_CHECKSUM_JSON]
    if inner_chunk_shape is None:
        return inner
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [int(size) for size in inner_chunk_shape],
                "codecs": inner,
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                "index_location": "end",
            },
        }
    ]


def zarr_codecs(codec: CodecConfig = CodecConfig()) -> dict:
    """Keyword arguments for `zarr.create_array(..., **zarr_codecs(codec))`: serializer and compressors.

    zarr-python applies them to the inner chunks when `shards=` is also given.
    """
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

    if codec.compressor == "zstd":
        compressor = ZstdCodec(level=codec.level)
    else:
        compressor = BloscCodec(cname=_blosc_cname(codec), clevel=codec.level, shuffle=codec.shuffle, typesize=2, blocksize=0)
    return {"serializer": BytesCodec(endian="little"), "compressors": (compressor, Crc32cCodec())}


def has_chunk_checksums(codecs: list[dict]) -> bool:
    """Whether a Zarr v3 `codecs` list (an array's `zarr.json`) checksums every (inner) chunk.

    Stores built before chunk checksums existed have a checksum on the shard index only: their
    chunks' damaged bytes decode to wrong values without an error.
    """
    for codec in codecs:
        if codec.get("name") == "sharding_indexed":
            return has_chunk_checksums(codec.get("configuration", {}).get("codecs", []))
        if codec.get("name") == CHUNK_CHECKSUM_JSON["name"]:
            return True
    return False


def compressed_bytes(stored: np.ndarray, codec: CodecConfig = CodecConfig(), chunk_frames: int = 256) -> int:
    """Bytes the lossless stage makes of float16 `(frames, channels, 2, bins)`, chunked by frames.

    Uses the same compressor as the Zarr pipeline (numcodecs), one chunk of `chunk_frames`
    frames at a time as a store would; excludes shard indexes and metadata.
    """
    compressor = _numcodecs_compressor(codec)
    stored = np.ascontiguousarray(stored, dtype=np.float16)
    return sum(len(compressor.encode(stored[start : start + chunk_frames])) for start in range(0, len(stored), chunk_frames))


def _compressor_json(codec: CodecConfig) -> dict:
    if codec.compressor == "zstd":
        return {"name": "zstd", "configuration": {"level": codec.level, "checksum": False}}
    return {
        "name": "blosc",
        "configuration": {"cname": _blosc_cname(codec), "clevel": codec.level, "shuffle": codec.shuffle, "typesize": 2, "blocksize": 0},
    }


def _numcodecs_compressor(codec: CodecConfig):
    import numcodecs

    if codec.compressor == "zstd":
        return numcodecs.Zstd(level=codec.level)
    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE, "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
    return numcodecs.Blosc(cname=_blosc_cname(codec), clevel=codec.level, shuffle=shuffle[codec.shuffle], blocksize=0)


def _blosc_cname(codec: CodecConfig) -> str:
    """blosc's inner compressor: zstd packs tighter, lz4hc decodes about 3x faster (the mixer's
    hot path reads two 2 MB chunks per example)."""
    return codec.compressor.removeprefix("blosc-")
