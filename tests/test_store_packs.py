"""Short tracks packed into shared shards and tars (store version 2, issue 21): the layout, the
frames read back, verify, the mixers, resume and append. With shards of 1024 frames every track
of the test corpus (258-602 frames) is short, so every one is packed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_build_support import STFT, assert_same_contents, flip_byte, load, store_contents, tar_member_data
from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset
from vr_data.mixer.wds_backend import WdsMixerDataset
from vr_data.store import open_store
from vr_data.store.build import build_store
from vr_data.store.format import STORE_VERSION
from vr_data.store.plan import Geometry
from vr_data.store.reader import iter_wds_samples
from vr_data.store.verify import verify_store

PACKED = Geometry(chunk_frames=32, shard_frames=1024, segment_frames=32, wds_shard_bytes=64 * 2**20)


@pytest.fixture(scope="module")
def packed_store(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "store"
    build_store(load(corpus), out, stft=STFT, geometry=PACKED)
    return out


def _packs(store) -> dict[str, list]:
    packs: dict[str, list] = {}
    for track in store.tracks:
        packs.setdefault(track.pack, []).append(track)
    return packs


def test_short_tracks_share_one_shard_one_tar_and_one_done_record_per_pack(packed_store):
    store = open_store(packed_store)
    assert json.loads((packed_store / "store.json").read_text())["version"] == STORE_VERSION == 2
    packs = _packs(store)
    assert None not in packs and len(packs) < len(store.tracks)
    for pack, tracks in packs.items():
        assert len({(t.role, t.split, t.manifest) for t in tracks}) == 1  # a tar never mixes splits
        shard = tracks[0].zarr_start // PACKED.shard_frames
        assert pack == f"pack_{tracks[0].role}_{shard}"
        for before, after in zip(tracks, tracks[1:]):  # end to end inside the pack's one shard
            assert after.zarr_start == before.zarr_start + before.reserved_frames
        assert (tracks[-1].zarr_start + tracks[-1].reserved_frames - 1) // PACKED.shard_frames == shard
        assert {tar for t in tracks for tar in t.wds_shards} == {f"{tracks[0].role}/{pack}-0000.tar"}
    for name in store.meta.arrays:
        roles = {t.role for t in store.tracks if name in t.arrays.values()}
        shards = [p for p in (packed_store / "zarr" / name / "c").rglob("*") if p.is_file()]
        assert len(shards) == len([p for p, tracks in packs.items() if tracks[0].role in roles])
    done = sorted(p.stem for p in (packed_store / ".build" / "done").iterdir())
    assert done == sorted(packs)


def test_packed_tracks_hold_the_frames_of_tracks_built_alone(packed_store, built_store):
    packed, alone = open_store(packed_store), open_store(built_store)
    assert alone.tracks and all(t.pack is None for t in alone.tracks)
    assert sorted(t.id for t in packed.tracks) == sorted(t.id for t in alone.tracks)
    for track in alone.tracks:
        for source in track.arrays:
            assert np.array_equal(packed.read_frames(track.id, source).view(np.uint16),
                                  alone.read_frames(track, source).view(np.uint16)), (track.id, source)
        samples = [s for s in iter_wds_samples(packed, track.role, packed.track(track.id).wds_shards)
                   if s["json"]["track"] == track.id]
        assert len(samples) == packed.track(track.id).segments == track.segments
        assert sum(s["json"]["frames"] for s in samples) == track.frames  # no padded frames


def test_verify_passes_a_packed_store_and_names_a_damaged_pack_tar(packed_store, tmp_path):
    assert verify_store(packed_store).ok
    out = tmp_path / "store"
    shutil.copytree(packed_store, out)
    track = open_store(out).tracks_by_role("vocal")[0]
    tar = out / "wds" / track.wds_shards[0]
    _, offset, _ = tar_member_data(tar, ".vocal.npy")
    flip_byte(tar, offset + 200)
    report = verify_store(out)
    assert ("wds_shard", f"wds/{track.wds_shards[0]}") in {(d.kind, d.name) for d in report.damages}


@pytest.mark.parametrize("backend", [ZarrMixerDataset, WdsMixerDataset])
def test_both_mixer_backends_train_from_a_packed_store(packed_store, backend):
    config = MixerConfig(crop_frames=64, batch_size=4, seed=3, examples_per_epoch=16, split="train")
    loader = MixerLoader(backend(packed_store, config), num_workers=0)
    batch = next(iter(loader))
    assert batch["mixture"].shape == (4, 2, STFT.bins, 64) and bool(batch["mixture"].isfinite().all())
    assert float(batch["mixture"].abs().sum()) > 0


def test_a_pack_without_its_done_record_is_rebuilt_whole_and_identical(corpus, packed_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(packed_store, out)
    pack = next(iter(_packs(open_store(out))))
    (out / ".build" / "done" / f"{pack}.json").unlink()
    for tar in (out / "wds").rglob(f"{pack}-*.tar"):
        tar.unlink()
    result = build_store(load(corpus), out)
    rebuilt = {o.id for o in result.outcomes if o.status == "built"}
    assert rebuilt == {t.id for t in _packs(open_store(packed_store))[pack]}
    assert_same_contents(store_contents(out), store_contents(packed_store))


def test_append_packs_new_short_tracks_without_moving_the_others(corpus, tmp_path):
    out = tmp_path / "store"
    build_store(load(corpus, ("pairs",)), out, stft=STFT, geometry=PACKED)
    before = {t.id: t for t in open_store(out).tracks}
    build_store(load(corpus, ("pairs", "vocals")), out, append=True)
    after = {t.id: t for t in open_store(out).tracks}
    assert all(after[i] == track for i, track in before.items())
    new_packs = {t.pack for i, t in after.items() if i not in before}
    assert new_packs and not new_packs & {t.pack for t in before.values()}
    assert verify_store(out).ok


def test_a_pack_tar_split_into_parts_lists_each_tracks_parts(corpus, tmp_path):
    out = tmp_path / "store"
    geometry = Geometry(chunk_frames=32, shard_frames=1024, segment_frames=32, wds_shard_bytes=200_000)
    build_store(load(corpus, ("vocals",)), out, stft=STFT, geometry=geometry)
    store = open_store(out)
    assert len({tar for t in store.tracks for tar in t.wds_shards}) > len(_packs(store))  # parts
    for track in store.tracks:
        samples = [s for s in iter_wds_samples(store, "vocal", track.wds_shards) if s["json"]["track"] == track.id]
        assert [s["json"]["segment"] for s in samples] == list(range(track.segments))
    assert verify_store(out).ok


def _as_version_1(store_path: Path, track_id: str, pad_value: float = 0.0) -> None:
    """Rewrite one vocal track's tars as store version 1 wrote them (its last segment padded to
    `segment_frames`, here with `pad_value`), with index.json, tracks.jsonl and store.json to match."""
    from test_build_support import GEOMETRY
    from vr_data.store.wds import TrackTarWriter, npy_parts

    store = open_store(store_path)
    track = store.track(track_id)
    samples = list(iter_wds_samples(store, "vocal", track.wds_shards))
    for tar in track.wds_shards:
        (store_path / "wds" / tar).unlink()
    writer = TrackTarWriter(store_path / "wds" / "vocal", track.id, "vocal", track.id, GEOMETRY.wds_shard_bytes,
                            relative_to=store_path / "wds")
    for sample in samples:
        padded = np.full((GEOMETRY.segment_frames,) + sample["vocal"].shape[1:], pad_value, np.float16)
        padded[:len(sample["vocal"])] = sample["vocal"]
        writer.add(sample["__key__"], {"vocal.npy": npy_parts(padded),
                                       "json": [json.dumps(sample["json"], sort_keys=True).encode()]})
    shards = writer.close()
    index = json.loads((store_path / "wds" / "index.json").read_text())
    index["shards"] = [s for s in index["shards"] if s["track"] != track.id] + [s.to_json() for s in shards]
    (store_path / "wds" / "index.json").write_text(json.dumps(index))
    records = [json.loads(line) for line in (store_path / "tracks.jsonl").read_text().splitlines()]
    for record in records:
        if record["id"] == track.id:
            record["wds"]["shards"] = [s.path for s in shards]
    (store_path / "tracks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = json.loads((store_path / "store.json").read_text())
    (store_path / "store.json").write_text(json.dumps({**meta, "version": 1}))


def test_a_version_1_store_with_zero_padded_last_segments_verifies(built_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(built_store, out)
    from test_build_support import GEOMETRY

    track = next(t for t in open_store(out).tracks_by_role("vocal") if t.frames % GEOMETRY.segment_frames)
    _as_version_1(out, track.id)
    assert verify_store(out).ok
    damaged = tmp_path / "damaged"
    shutil.copytree(built_store, damaged)
    _as_version_1(damaged, track.id, pad_value=1.0)  # padding that is not silence
    report = verify_store(damaged)
    assert any(d.kind == "track" and d.name == track.id and "differs" in d.reason for d in report.damages)
