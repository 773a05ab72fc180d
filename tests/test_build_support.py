"""Helpers for the store tests: a tiny multi-format corpus, its manifests, small configs, and
store comparisons. Imported by test modules and by conftest.py (whose `corpus`, `built_store`
and `mixer_store` fixtures use them); holds no tests and no fixtures.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import tensorstore as ts

from vr_data.audio import write_audio
from vr_data.testing.demo import instrumental_track, vocal_track
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.dsp.stft import StftConfig
from vr_data.store.plan import Geometry

# Small transforms and containers keep the tests fast while every boundary case still occurs:
# tracks span several shards, end mid-shard and mid-segment, and tars split into parts.
STFT = StftConfig(n_fft=512, hop_length=256)
GEOMETRY = Geometry(chunk_frames=32, shard_frames=128, segment_frames=32, wds_shard_bytes=200_000)


def write_corpus(directory: Path) -> dict[str, Path]:
    """Pairs, vocals, instrumentals and pretraining audio in wav/flac/ogg/mp3 at 22.05-48 kHz."""
    roots = {name: directory / name for name in ("pairs", "vocals", "instrumentals", "pretrain")}
    for index, (name, extension, rate, seconds, mono) in enumerate([
        ("Aurora - One", "flac", 44100, 3.0, False),
        ("Brass - Two", "ogg", 48000, 2.5, False),
        ("Cedar - Three", "wav", 32000, 2.0, True),
    ]):
        instrumental = instrumental_track(seconds, rate, seed=index)
        mixture = np.clip(instrumental + vocal_track(seconds, rate, seed=index), -1, 1)
        if mono:
            instrumental, mixture = instrumental.mean(0, keepdims=True), mixture.mean(0, keepdims=True)
        write_audio(roots["pairs"] / "mixtures" / f"{name}_mix.{extension}", mixture, rate)
        write_audio(roots["pairs"] / "instruments" / f"{name}_inst.{extension}", instrumental, rate)
    for index, (extension, rate) in enumerate([("wav", 32000), ("mp3", 22050), ("flac", 48000)]):
        write_audio(roots["vocals"] / f"take_{index}.{extension}", vocal_track(2.0, rate, seed=20 + index), rate)
    write_audio(roots["instrumentals"] / "beat_0.flac", instrumental_track(3.5, 44100, seed=30), 44100)
    write_audio(roots["instrumentals"] / "beat_1.ogg", instrumental_track(1.5, 48000, seed=31), 48000)
    write_audio(roots["pretrain"] / "radio_0.wav", instrumental_track(2.0, 44100, seed=40), 44100)
    return roots


def scan_corpus(roots: dict[str, Path], manifests: Path) -> dict[str, Path]:
    """Scan each library into `manifests/{layout}.jsonl`; returns the manifest paths."""
    paths = {}
    for layout, root in roots.items():
        result = scan(root, ScanOptions(layout=layout, valid_fraction=0.4))
        paths[layout] = write_manifest(manifests / f"{layout}.jsonl", result.manifest)
    return paths


def load(corpus: dict[str, Path], layouts=("pairs", "vocals", "instrumentals", "pretrain")):
    return [read_manifest(corpus[layout]) for layout in layouts]


def store_contents(path: Path) -> dict:
    """Everything that must be identical between two builds of the same manifests:
    every array's values, every tar's bytes, tracks.jsonl, rejects.jsonl, wds/index.json."""
    contents = {}
    for array_dir in sorted((path / "zarr").iterdir()):
        if array_dir.is_dir():
            array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir)}}).result()
            contents[f"zarr/{array_dir.name}"] = array.read().result()
    for tar in sorted((path / "wds").rglob("*.tar")):
        contents[tar.relative_to(path).as_posix()] = tar.read_bytes()
    for name in ("tracks.jsonl", "rejects.jsonl", "wds/index.json"):
        contents[name] = (path / name).read_text()
    plan = json.loads((path / "plan.json").read_text())
    plan.pop("created")
    contents["plan"] = plan
    return contents


def assert_same_contents(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for key in left:
        if isinstance(left[key], np.ndarray):
            assert left[key].shape == right[key].shape, key
            assert np.array_equal(left[key].view(np.uint16), right[key].view(np.uint16)), key
        else:
            assert left[key] == right[key], key


# ---------------------------------------------------------------------------- damaging stores


def chunk_spans(shard: Path, chunks: int = GEOMETRY.shard_frames // GEOMETRY.chunk_frames) -> list[tuple[int, int]]:
    """(offset, bytes) of every stored inner chunk of a Zarr shard file of `chunks` inner chunks,
    from its index (at the end: one little-endian (offset, nbytes) uint64 pair per chunk, then a
    4-byte crc32c)."""
    data = Path(shard).read_bytes()
    index = np.frombuffer(data[-(16 * chunks + 4):-4], "<u8").reshape(chunks, 2)
    return [(int(offset), int(size)) for offset, size in index if offset != np.iinfo(np.uint64).max]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x01
    Path(path).write_bytes(bytes(data))


def tar_member_data(tar: Path, suffix: str) -> tuple[str, int, int]:
    """(name, data offset, size) of the first member of `tar` whose name ends with `suffix`."""
    import tarfile

    with tarfile.open(tar) as archive:
        for member in archive:
            if member.name.endswith(suffix):
                return member.name, member.offset_data, member.size
    raise AssertionError(f"no member *{suffix} in {tar}")


def as_built_before_checksums(store: Path) -> None:
    """Rewrite a store as the builder wrote it before integrity checks: Zarr chunks without a
    crc32c and all-zero chunks not stored, tar members without checksum headers."""
    import shutil
    import tarfile

    for array_dir in sorted(p for p in (store / "zarr").iterdir() if p.is_dir()):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir)}}
        values = ts.open(spec).result().read().result()
        metadata = json.loads((array_dir / "zarr.json").read_text())
        sharding = metadata["codecs"][0]["configuration"]
        sharding["codecs"] = [codec for codec in sharding["codecs"] if codec["name"] != "crc32c"]
        metadata.pop("attributes", None)
        metadata = {k: v for k, v in metadata.items() if k not in ("zarr_format", "node_type", "storage_transformers")}
        shutil.rmtree(array_dir)
        ts.open({**spec, "metadata": metadata}, create=True).result().write(values).result()
    for tar in sorted((store / "wds").rglob("*.tar")):
        with tarfile.open(tar) as archive:
            members = [(member, archive.extractfile(member).read()) for member in archive]
        with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as archive:
            for member, data in members:
                member.pax_headers = {}
                archive.addfile(member, io.BytesIO(data))
