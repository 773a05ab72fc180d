"""Codec benchmark: size, round-trip SNR and speed of each spectrogram codec through real Zarr v3.

Usage:
    python benchmarks/bench_codec.py                      # synthetic music-like tracks (all styles)
    python benchmarks/bench_codec.py a.flac b.wav ...     # your own files instead
    python benchmarks/bench_codec.py --seconds 60 --codecs f16-q f16

For each codec, every track is STFT'd and encoded, all tracks are written one after another
into one sharded Zarr v3 array (frames-major float16, inner chunks of `--chunk-frames` frames,
shards of `--chunks-per-shard` chunks, written by zarr-python with the codec's lossless stage),
then read back with tensorstore, decoded and inverted. Printed per codec: GB per stereo
audio-hour (bytes on disk / hours), min and median round-trip SNR over tracks, encode speed
(codec only; STFT timed separately), decode speed (read + decode of whole tracks, in
audio-seconds per second) and random-crop speed (crops of `--chunk-frames` frames per second,
tensorstore read + decode). The complex64 .npy baseline is measured by writing the .npy files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vr_data.audio import load_audio  # noqa: E402
from vr_data.store.codec import CODECS, CodecConfig, decode, decode_frames_major, encode, zarr_codecs  # noqa: E402
from vr_data.dsp.metrics import snr_db  # noqa: E402
from vr_data.dsp.stft import StftConfig, istft, stft  # noqa: E402
from vr_data.testing.synth import STYLES, music_like  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="audio files to use instead of synthetic tracks")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each synthetic track (two per style)")
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    parser.add_argument("--chunk-frames", type=int, default=256)
    parser.add_argument("--chunks-per-shard", type=int, default=16)
    parser.add_argument("--crops", type=int, default=300, help="random crops read per codec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compressors", nargs="+", default=["blosc-zstd", "blosc-lz4hc"],
                        help="lossless stages to measure each codec with (e.g. blosc-zstd blosc-lz4hc zstd)")
    args = parser.parse_args()

    config = StftConfig()
    tracks = _tracks(args, config)
    seconds = sum(audio.shape[1] for _, audio in tracks) / config.sample_rate
    hours = seconds / 3600
    print(f"{len(tracks)} stereo tracks, {seconds / 60:.1f} min of audio ({'files' if args.files else 'synthetic'})")

    started = time.perf_counter()
    spectrograms = [stft(audio, config) for _, audio in tracks]
    stft_seconds = time.perf_counter() - started
    print(f"STFT: {seconds / stft_seconds:.0f} audio-s/s")

    with tempfile.TemporaryDirectory(prefix="bench_codec_") as scratch:
        scratch = Path(scratch)
        npy_bytes = 0
        for index, spec in enumerate(spectrograms):
            path = scratch / f"baseline_{index}.npy"
            np.save(path, np.ascontiguousarray(spec))  # complex64 (channels, bins, frames), the classic cache
            npy_bytes += path.stat().st_size
            path.unlink()
        print("GB/h: bytes on disk per stereo audio-hour; ratio: vs complex64 .npy; SNR in dB over whole tracks;")
        print("speeds in audio-seconds per second: enc = codec encode, dec = codec decode (in memory),")
        print(f"read+dec = tensorstore read + decode of whole tracks; crops/s = random {args.chunk_frames}-frame crops read + decoded")
        print(f"{'codec':22s} {'GB/h':>6s} {'ratio':>6s} {'minSNR':>7s} {'medSNR':>7s} {'enc':>7s} {'dec':>7s} {'read+dec':>9s} {'crops/s':>8s}")
        print(f"{'npy c64':22s} {npy_bytes / hours / 1e9:6.3f} {1.0:6.2f}")
        for name in args.codecs:
            for compressor in args.compressors:
                codec = CodecConfig(name=name, compressor=compressor)
                row = _bench_codec(codec, tracks, spectrograms, config, scratch / f"{name}-{compressor}", args)
                ratio = npy_bytes / row["bytes"]
                print(
                    f"{name + ' ' + compressor:22s} {row['bytes'] / hours / 1e9:6.3f} {ratio:6.2f} {min(row['snrs']):7.1f} "
                    f"{statistics.median(row['snrs']):7.1f} {seconds / row['encode_s']:7.0f} {seconds / row['decode_only_s']:7.0f} "
                    f"{seconds / row['decode_s']:9.0f} {row['crops_per_s']:8.0f}"
                )


def _tracks(args: argparse.Namespace, config: StftConfig) -> list[tuple[str, np.ndarray]]:
    if args.files:
        return [(path, load_audio(path, config.sample_rate)) for path in args.files]
    return [
        (f"{style}-{repeat}", music_like(args.seconds, config.sample_rate, seed=args.seed + 100 * repeat + index, style=style))
        for repeat in range(2)
        for index, style in enumerate(STYLES)
    ]


def _bench_codec(codec, tracks, spectrograms, config, path, args) -> dict:
    import tensorstore
    import zarr

    started = time.perf_counter()
    stored_tracks = [encode(spec, codec) for spec in spectrograms]
    encode_s = time.perf_counter() - started

    offsets = np.cumsum([0] + [len(stored) for stored in stored_tracks])
    inner = (args.chunk_frames, 2, 2, config.bins)
    shard = (args.chunk_frames * args.chunks_per_shard, 2, 2, config.bins)
    array = zarr.create_array(
        store=str(path), shape=(int(offsets[-1]), 2, 2, config.bins), dtype="float16", chunks=inner, shards=shard, **zarr_codecs(codec)
    )
    array[:] = np.concatenate(stored_tracks)  # one writer, whole array: every shard written whole
    on_disk = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())

    started = time.perf_counter()
    for stored in stored_tracks:
        decode(stored)
    decode_only_s = time.perf_counter() - started

    reader = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result()
    started = time.perf_counter()
    decoded = [decode(reader[int(start) : int(stop)].read().result()) for start, stop in zip(offsets[:-1], offsets[1:])]
    decode_s = time.perf_counter() - started
    snrs = [snr_db(audio, istft(spec, config, length=audio.shape[1])) for (_, audio), spec in zip(tracks, decoded)]

    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, int(offsets[-1]) - args.chunk_frames, size=args.crops)
    buffer = np.empty((args.chunk_frames, 2, config.bins), dtype=np.complex64)
    started = time.perf_counter()
    for start in starts:
        decode_frames_major(reader[int(start) : int(start) + args.chunk_frames].read().result(), out=buffer)
    crops_per_s = args.crops / (time.perf_counter() - started)
    return {
        "bytes": on_disk,
        "snrs": snrs,
        "encode_s": encode_s,
        "decode_only_s": decode_only_s,
        "decode_s": decode_s,
        "crops_per_s": crops_per_s,
    }


if __name__ == "__main__":
    main()
