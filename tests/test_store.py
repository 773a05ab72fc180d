"""Reading stores: the Store API, zarr-python compatibility, WebDataset samples, verify, the CLI."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from test_build_support import GEOMETRY, STFT, as_built_before_checksums, chunk_spans, flip_byte, load, tar_member_data
from pipelines.vrdata import app
from vr_data.store.build import build_store
from vr_data.errors import VRDataError
from vr_data.store import iter_wds_samples, open_store
from vr_data.store.reader import StoreIntegrityWarning
from vr_data.store.verify import verify_store
from vr_data.store.wds import iter_tar_samples

runner = CliRunner()


def test_store_json_and_layout(built_store):
    meta = json.loads((built_store / "store.json").read_text())
    assert meta["format"] == "vr-store" and meta["complete"] is True
    assert meta["stft"] == STFT.to_dict() and meta["segment_frames"] == GEOMETRY.segment_frames
    assert {m["role"] for m in meta["manifests"]} == {"pair", "vocal", "instrumental", "pretrain"}
    assert all(len(m["sha256"]) == 64 for m in meta["manifests"])
    assert set(meta["arrays"]) == {"pair_mixture", "pair_instrumental", "vocal", "instrumental", "pretrain"}
    for name, array in meta["arrays"].items():
        assert array["shape"][1:] == [2, 2, STFT.bins] and array["shard_frames"] == GEOMETRY.shard_frames
    index = json.loads((built_store / "wds" / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == sum(index["samples"].values())
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in index["shards"])


def test_zarr_python_reads_what_tensorstore_wrote(built_store):
    store = open_store(built_store)
    group = zarr.open_group(built_store / "zarr", mode="r")
    for track in store.tracks:
        for source, name in track.arrays.items():
            array = group[name]
            assert array.shards[0] == GEOMETRY.shard_frames and array.chunks[0] == GEOMETRY.chunk_frames
            by_zarr = array[track.zarr_start: track.zarr_start + track.frames]
            assert np.array_equal(by_zarr, store.read_frames(track, source))
            padding = array[track.zarr_start + track.frames: track.zarr_start + track.reserved_frames]
            assert not np.any(padding)


def test_read_api(built_store):
    store = open_store(built_store)
    pair = store.tracks_by_role("pair")[0]
    assert store.tracks_by_role("pair", split=pair.split)[0] is not None
    crop = store.read_frames(pair.id, "mixture", 10, 42)
    assert crop.shape == (32, 2, 2, STFT.bins) and crop.dtype == np.float16
    many = store.read_many([(pair, "mixture", 10, 42), (pair, "instrumental", 0, 5)])
    assert np.array_equal(many[0], crop) and many[1].shape[0] == 5
    spec = store.read_spectrogram(pair, "instrumental", 3, 9)
    assert spec.shape == (2, STFT.bins, 6) and spec.dtype == np.complex64
    with pytest.raises(ValueError, match="outside track"):
        store.read_frames(pair, "mixture", pair.frames - 4, pair.frames + 4)
    with pytest.raises(VRDataError, match="no source"):
        store.read_frames(pair, "vocal", 0, 4)
    clone = pickle.loads(pickle.dumps(store))  # DataLoader workers get a copy that reopens arrays
    assert np.array_equal(clone.read_frames(pair, "mixture", 10, 42), crop)


def test_wds_samples_match_zarr_and_the_last_is_not_padded(built_store):
    store = open_store(built_store)
    track = max(store.tracks_by_role("pair"), key=lambda t: t.frames)
    assert len(track.wds_shards) > 1  # split into parts by wds_shard_bytes
    samples = [s for s in iter_wds_samples(store, "pair", track.wds_shards)]
    assert len(samples) == track.segments == -(-track.frames // GEOMETRY.segment_frames)
    for index, sample in enumerate(samples):
        assert sample["__key__"] == f"{track.id}_{index:05d}" and "." not in sample["__key__"]
        meta = sample["json"]
        start = index * GEOMETRY.segment_frames
        assert meta["track"] == track.id and meta["start_frame"] == start and meta["split"] == track.split
        assert meta["frames"] == min(GEOMETRY.segment_frames, track.frames - start)
        assert sample["mixture"].shape == (meta["frames"], 2, 2, STFT.bins)  # store version 2: no padding
        stop = start + meta["frames"]
        assert np.array_equal(sample["mixture"], store.read_frames(track, "mixture", start, stop))
        assert np.array_equal(sample["instrumental"], store.read_frames(track, "instrumental", start, stop))
    assert samples[-1]["json"]["frames"] < GEOMETRY.segment_frames  # the track does not end on a segment
    assert sum(1 for _ in iter_wds_samples(store, "vocal")) == sum(t.segments for t in store.tracks_by_role("vocal"))


def test_webdataset_library_reads_the_tars(built_store):
    import webdataset as wds

    store = open_store(built_store)
    urls = [str(built_store / "wds" / shard.path) for shard in store.wds_shards("vocal")]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == sum(t.segments for t in store.tracks_by_role("vocal"))
    assert samples[0]["vocal.npy"].dtype == np.float16


def _tar_with(tmp_path, name: str):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as archive:
        data = b"{}"
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["/etc/x_00000.json", "../x_00000.json", "sub/x_00000.json", "x_00000.pickle"])
def test_tar_reader_refuses_unsafe_members(tmp_path, name):
    with pytest.raises(VRDataError, match="evil.tar"):
        list(iter_tar_samples(_tar_with(tmp_path, name)))


def test_tar_reader_refuses_pickled_arrays(tmp_path):
    path = tmp_path / "evil.tar"
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("x_00000.vocal.npy")
        info.size = len(buffer.getvalue())
        archive.addfile(info, io.BytesIO(buffer.getvalue()))
    with pytest.raises(VRDataError, match="damaged"):
        list(iter_tar_samples(path))


def test_incomplete_store_is_refused(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    meta = json.loads((out / "store.json").read_text())
    (out / "store.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(VRDataError, match="incomplete.*rerun"):
        open_store(out)
    with pytest.raises(VRDataError, match="not a store"):
        open_store(tmp_path)


def test_verify_names_damaged_tar_and_zarr_shard(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    assert verify_store(out).ok
    store = open_store(out)
    vocal, pair = store.tracks_by_role("vocal")[0], store.tracks_by_role("pair")[0]
    tar = out / "wds" / vocal.wds_shards[0]
    data = bytearray(tar.read_bytes())
    data[1500] ^= 0xFF  # inside the first array's payload
    tar.write_bytes(bytes(data))
    shard = out / "zarr" / "pair_mixture" / "c" / str(pair.zarr_start // GEOMETRY.shard_frames) / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = verify_store(out)
    damaged = {(d.kind, d.name) for d in report.damages}
    assert ("wds_shard", f"wds/{vocal.wds_shards[0]}") in damaged
    assert ("track", vocal.id) in damaged and ("track", pair.id) in damaged
    zarr_shard = f"zarr/pair_mixture/c/{pair.zarr_start // GEOMETRY.shard_frames}/0/0/0"
    assert any(zarr_shard in d.name or zarr_shard in d.reason for d in report.damages if d.kind != "wds_shard")
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and vocal.id in result.output and "damaged wds_shard" in result.output


def test_cli_build_resume_verify(corpus, tmp_path):
    out = tmp_path / "store"
    pairs = corpus["pairs"]
    args = ["build-shards", str(pairs), "--out", str(out), "--workers", "0", "--n-fft", "512", "--hop-length", "256",
            "--chunk-frames", "32", "--shard-frames", "128", "--segment-frames", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "built now" in result.output and "GB/h" in result.output
    assert open_store(out).hours("pair") > 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to do" in again.output
    other = runner.invoke(app, args + ["--hop-length", "128"])
    assert other.exit_code == 2 and "STFT config" in other.output and "Traceback" not in other.output
    verified = runner.invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0 and "intact" in verified.output
    incomplete = tmp_path / "half"
    build_store(load(corpus, ("vocals",)), incomplete, stft=STFT, geometry=GEOMETRY)
    (incomplete / "store.json").write_text((incomplete / "store.json").read_text().replace('"complete": true', '"complete": false'))
    refused = runner.invoke(app, ["verify", str(incomplete)])
    assert refused.exit_code == 2 and "incomplete" in refused.output


def test_shard_paths_outside_wds_are_refused(built_store):
    store = open_store(built_store)
    with pytest.raises(VRDataError, match="escapes"):
        list(iter_wds_samples(store, "vocal", ["../store.json"]))


def test_verify_reports_manifest_items_missing_from_the_store(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    lines = (out / "tracks.jsonl").read_text().splitlines()
    dropped = json.loads(lines[-1])["id"]
    (out / "tracks.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    report = verify_store(out)
    assert [(d.kind, d.name) for d in report.damages] == [("track", dropped)]
    assert "neither built nor rejected" in report.damages[0].reason


def test_verify_names_an_unreadable_zarr_shard(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    vocal = open_store(out).tracks_by_role("vocal")[0]
    index = vocal.zarr_start // GEOMETRY.shard_frames
    shard = out / "zarr" / "vocal" / "c" / str(index) / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # the shard index: its crc32c no longer matches
    shard.write_bytes(bytes(data))
    with pytest.raises(VRDataError, match=f"track {vocal.id}"):
        open_store(out).read_frames(vocal, "vocal")
    damaged = {(d.kind, d.name) for d in verify_store(out).damages}
    assert ("zarr_shard", f"zarr/vocal/c/{index}/0/0/0") in damaged and ("track", vocal.id) in damaged


def test_read_many_into_fills_caller_buffers(built_store):
    from vr_data.store import open_store

    store = open_store(built_store)
    requests = [(track, track.sources[0], 3, min(track.frames, 40)) for track in store.tracks[:4]]
    expected = store.read_many(requests)
    outs = [np.full(frames.shape, np.float16(7), np.float16) for frames in expected]
    store.read_many_into(requests, outs)
    for got, want in zip(outs, expected):
        np.testing.assert_array_equal(got, want)


def _shard_of(store_path, track, source, frame=0):
    name = track.arrays[source]
    index = (track.zarr_start + frame) // GEOMETRY.shard_frames
    return store_path / "zarr" / name / "c" / str(index) / "0" / "0" / "0", f"zarr/{name}/c/{index}/0/0/0"


def test_a_flipped_byte_in_a_zarr_chunk_raises_naming_the_track_and_the_shard(built_store, tmp_path):
    """The chunk's crc32c catches one flipped bit of its compressed bytes: the read raises
    (VRDataError naming the track and the shard file) instead of returning changed values, and the
    other chunks of the same shard still read."""
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    store = open_store(out)
    assert store.chunk_checksums
    track = max(store.tracks_by_role("vocal"), key=lambda t: t.frames)
    assert track.frames > 2 * GEOMETRY.chunk_frames
    intact = store.read_frames(track, "vocal", GEOMETRY.chunk_frames, 2 * GEOMETRY.chunk_frames)
    path, relative = _shard_of(out, track, "vocal")
    offset, size = chunk_spans(path)[0]  # the first inner chunk: frames [0, chunk_frames) of the track
    flip_byte(path, offset + size // 2)
    damaged = open_store(out)
    with pytest.raises(VRDataError, match=f"track {track.id}") as raised:
        damaged.read_frames(track, "vocal", 0, 8)
    assert relative in str(raised.value) and "checksum" in str(raised.value)
    with pytest.raises(VRDataError, match=f"track {track.id}"):
        damaged.read_many_into([(track, "vocal", 4, 20)], [np.zeros((16, 2, 2, STFT.bins), np.float16)])
    np.testing.assert_array_equal(damaged.read_frames(track, "vocal", GEOMETRY.chunk_frames, 2 * GEOMETRY.chunk_frames), intact)


def test_a_deleted_zarr_shard_raises_instead_of_reading_silence(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    track = max(open_store(out).tracks_by_role("pair"), key=lambda t: t.frames)
    assert track.frames > GEOMETRY.shard_frames  # its second shard holds frames too
    path, relative = _shard_of(out, track, "instrumental", GEOMETRY.shard_frames)
    path.unlink()
    store = open_store(out)
    store.read_frames(track, "instrumental", 0, 16)  # the first shard is intact
    expected = f"shard missing in track {track.id} \\(array pair_instrumental, frames 120:136\\)"  # track frames
    with pytest.raises(VRDataError, match=expected) as raised:
        store.read_frames(track, "instrumental", GEOMETRY.shard_frames - 8, GEOMETRY.shard_frames + 8)
    assert relative in str(raised.value)


def test_every_shard_of_a_track_is_stored_even_when_silent(tmp_path):
    """A shard of digital silence inside a track is written too (its chunks are all zeros), so a
    missing shard file is known to be damage, not silence."""
    from vr_data.store.arrays import array_integrity, ensure_array, open_array
    from vr_data.store.codec import CodecConfig

    path = tmp_path / "array"
    ensure_array(path, 3 * GEOMETRY.shard_frames, STFT.bins, GEOMETRY.chunk_frames, GEOMETRY.shard_frames, CodecConfig())
    array = open_array(path)
    values = np.zeros((3 * GEOMETRY.shard_frames, 2, 2, STFT.bins), np.float16)
    values[5] = 1.0  # shards 0 and 2 hold sound, shard 1 is all zeros
    values[2 * GEOMETRY.shard_frames + 5] = 1.0
    for shard in range(3):
        frames = slice(shard * GEOMETRY.shard_frames, (shard + 1) * GEOMETRY.shard_frames)
        array[frames].write(values[frames]).result()
    assert [(path / "c" / str(shard) / "0" / "0" / "0").is_file() for shard in range(3)] == [True, True, True]
    assert array_integrity(path).every_chunk_stored and array_integrity(path).chunk_checksums
    assert np.array_equal(open_array(path, read_only=True).read().result(), values)


def test_a_flipped_byte_in_a_tar_member_raises_naming_the_member_and_track(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    store = open_store(out)
    track = store.tracks_by_role("vocal")[0]
    tar = out / "wds" / track.wds_shards[0]
    name, offset, size = tar_member_data(tar, ".vocal.npy")
    flip_byte(tar, offset + size - 100)  # inside the float16 data: np.load would not notice
    with pytest.raises(VRDataError, match=f"member {name} \\(track {track.id}\\) fails its crc32c") as raised:
        list(iter_tar_samples(tar))
    assert str(tar) in str(raised.value)
    # the json member is covered too
    other = out / "wds" / store.tracks_by_role("vocal")[1].wds_shards[0]
    name, offset, size = tar_member_data(other, ".json")
    flip_byte(other, offset + size // 2)
    with pytest.raises(VRDataError, match=f"member {name}"):
        list(iter_tar_samples(other))


def test_tar_members_record_their_crc32c_in_pax_headers(built_store):
    import google_crc32c

    tar = next((built_store / "wds").rglob("*.tar"))
    with tarfile.open(tar) as archive:
        members = [(member, archive.extractfile(member).read()) for member in archive]
    assert members and all(member.pax_headers["VRDATA.crc32c"] == f"{google_crc32c.value(data):08x}"
                           for member, data in members)


def test_a_store_built_before_checksums_reads_with_a_notice(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    expected = {track.id: open_store(out).read_frames(track, track.sources[0]) for track in open_store(out).tracks}
    samples = {s["__key__"]: s["vocal"] for s in iter_wds_samples(open_store(out), "vocal")}
    as_built_before_checksums(out)
    with pytest.warns(StoreIntegrityWarning, match="before chunk checksums"):
        store = open_store(out)
    assert not store.chunk_checksums
    for track in store.tracks:
        np.testing.assert_array_equal(store.read_frames(track, track.sources[0]), expected[track.id])
    old = {s["__key__"]: s["vocal"] for s in iter_wds_samples(store, "vocal")}
    assert old.keys() == samples.keys() and all(np.array_equal(old[key], samples[key]) for key in samples)
    with tarfile.open(next((out / "wds").rglob("*.tar"))) as archive:
        assert not any(member.pax_headers for member in archive)
