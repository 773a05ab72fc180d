"""Building stores: plan, shard ownership, read-back, rejects, resume, append, config refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr

from test_build_support import GEOMETRY, STFT, assert_same_contents, load, store_contents
from vr_data import errors
from vr_data.audio import write_audio
from vr_data.dsp.stft import block_stft
from vr_data.store.build import BuildOptions, build_store
from vr_data.store.codec import CodecConfig
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.sources import load_item_source
from vr_data.dsp.stft import StftConfig, istft, stft, stft_frames_major
from vr_data.store import open_store
from vr_data.store.plan import new_plan, resampled_samples


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 48000, 96000])
def test_resampled_length_matches_soxr(rate):
    for samples in (1, 400, 1520, 12345, 100_240, 100_720, 441_001):
        audio = np.zeros((samples, 1), np.float32)
        assert resampled_samples(samples, rate, 44100) == soxr.resample(audio, rate, 44100, quality="HQ").shape[0]


@pytest.mark.parametrize("config", [STFT, StftConfig(n_fft=512, hop_length=128, pad_mode="reflect"),
                                    StftConfig(n_fft=400, hop_length=160, pad_end=False),
                                    StftConfig(n_fft=512, hop_length=256, center=False)])
def test_block_stft_equals_whole_track(config):
    audio = np.random.default_rng(0).standard_normal((2, 30_011)).astype(np.float32)
    whole = stft_frames_major(audio, config)
    frames = whole.shape[1]
    for block in (1, 37, 1024):
        parts = np.concatenate([block_stft(audio, config, first, min(first + block, frames))
                                for first in range(0, frames, block)], axis=1)
        np.testing.assert_allclose(parts, whole, atol=1e-4 * np.abs(whole).max())


def test_plan_is_deterministic_and_gives_each_track_whole_shards(corpus):
    manifests = load(corpus)
    plans = [new_plan(STFT, CodecConfig(), GEOMETRY) for _ in range(2)]
    for plan in plans:
        plan.extend(manifests)
    assert [t.to_json() for t in plans[0].tracks] == [t.to_json() for t in plans[1].tracks]
    by_role: dict[str, list] = {}
    for track in plans[0].tracks:
        assert track.start_frame % GEOMETRY.shard_frames == 0
        assert track.reserved_frames % GEOMETRY.shard_frames == 0
        assert track.reserved_frames >= track.expected_frames + 2
        by_role.setdefault(track.role, []).append(track)
    for tracks in by_role.values():  # end to end, never overlapping
        for before, after in zip(tracks, tracks[1:]):
            assert after.start_frame == before.start_frame + before.reserved_frames


def test_store_reads_back_what_was_decoded(corpus, built_store):
    store = open_store(built_store)
    manifests = {m.role: m for m in load(corpus)}
    assert {t.role for t in store.tracks} == {"pair", "vocal", "instrumental", "pretrain"}
    assert len(store.tracks) == 3 + 3 + 2 + 1 and not store.rejects()
    for track in store.tracks:
        manifest = manifests[track.role]
        item = next(i for i in manifest.items if i.id == track.id)
        assert track.frames == track.expected_frames
        assert track.split == item.split
        for source in track.sources:
            audio = load_item_source(manifest, item, source, STFT.sample_rate)
            reference = stft(audio[:, : min(int(round(item.duration * 44100)), audio.shape[1])], STFT)
            stored = store.read_spectrogram(track, source)
            assert stored.shape == (2, STFT.bins, track.frames)
            frames = min(reference.shape[2], track.frames)
            error = np.sum(np.abs(stored[..., :frames] - reference[..., :frames]) ** 2)
            snr = 10 * np.log10(np.sum(np.abs(reference) ** 2) / error)
            assert snr > 38, (track.id, source, snr)
            restored = istft(stored, STFT, length=audio.shape[1])
            assert restored.shape == audio.shape
    pair = store.tracks_by_role("pair")[0]
    assert set(pair.arrays) == {"mixture", "instrumental"}
    assert pair.arrays["mixture"] == "pair_mixture" and pair.arrays["instrumental"] == "pair_instrumental"


def test_bad_inputs_become_rejects_and_never_abort(corpus, tmp_path):
    library = tmp_path / "vocals"
    shutil.copytree(read_manifest(corpus["vocals"]).root, library)
    manifest = read_manifest(corpus["vocals"], root=library)
    manifest.source_path = write_manifest(tmp_path / "vocals.jsonl", manifest)
    manifest = read_manifest(manifest.source_path, root=library)
    files = {item.id: library / item.files["audio"].path for item in manifest.items}
    ids = sorted(files)
    (files[ids[0]]).write_bytes(b"RIFF\x10\x00\x00\x00WAVEgarbage")                    # corrupt
    nan = np.full((2, 64_000), np.nan, np.float32)
    sf.write(str(files[ids[1]].with_suffix(".tmp.wav")), nan.T, 32000, subtype="FLOAT")
    files[ids[1]].with_suffix(".tmp.wav").replace(files[ids[1]])                        # NaN (as .wav at the same path)
    write_audio(files[ids[2]], np.zeros((2, 96_000), np.float32), 48000)                # silent
    result = build_store([manifest], tmp_path / "store", stft=STFT, geometry=GEOMETRY,
                         options=BuildOptions(verify_hashes=False))
    codes = {reject.id: reject.code for reject in result.rejects}
    assert codes == {ids[0]: errors.UNREADABLE, ids[1]: errors.NON_FINITE, ids[2]: errors.SILENT}
    assert result.count("rejected") == 3 and result.count("built") == 0
    lines = [json.loads(line) for line in (tmp_path / "store" / "rejects.jsonl").read_text().splitlines()]
    assert {line["id"] for line in lines} == set(ids)
    assert all(line["manifest"] == str(manifest.source_path) and line["reason"] for line in lines)
    assert open_store(tmp_path / "store").tracks == []
    checked = build_store([manifest], tmp_path / "store2", stft=STFT, geometry=GEOMETRY)
    assert {r.code for r in checked.rejects} == {errors.HASH_MISMATCH}


def test_channels_and_too_short_are_rejected(corpus, tmp_path):
    library = tmp_path / "inst"
    shutil.copytree(read_manifest(corpus["instrumentals"]).root, library)
    manifest = read_manifest(corpus["instrumentals"], root=library)
    by_name = {item.files["audio"].path: item for item in manifest.items}
    surround = np.tile(np.linspace(-0.5, 0.5, 154_350, dtype=np.float32), (3, 1))
    write_audio(library / "beat_0.flac", surround, 44100)                                # 3 channels
    result = build_store([manifest], tmp_path / "store", stft=STFT, geometry=GEOMETRY,
                         options=BuildOptions(verify_hashes=False, min_seconds=2.0))
    codes = {r.id: r.code for r in result.rejects}
    assert codes == {by_name["beat_0.flac"].id: errors.CHANNELS, by_name["beat_1.ogg"].id: errors.TOO_SHORT}


def test_rerun_of_a_complete_store_does_nothing_and_other_configs_are_refused(corpus, built_store, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built_store, out)
    before = store_contents(out)
    again = build_store(load(corpus), out)
    assert again.already_complete and again.count("skipped") == len(again.outcomes)
    assert_same_contents(before, store_contents(out))
    with pytest.raises(VRDataError, match="STFT config"):
        build_store(load(corpus), out, stft=StftConfig(n_fft=1024, hop_length=256))
    with pytest.raises(VRDataError, match="codec"):
        build_store(load(corpus), out, codec=CodecConfig(name="f16"))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(VRDataError, match="not a store"):
        build_store(load(corpus), tmp_path / "occupied")


def test_interrupted_build_resumes_to_identical_store(corpus, built_store, tmp_path):
    out = tmp_path / "store"
    seen = []

    def stop_after_three(outcome):
        seen.append(outcome.id)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_store(load(corpus), out, stft=STFT, geometry=GEOMETRY, on_track=stop_after_three)
    with pytest.raises(VRDataError, match="incomplete"):
        open_store(out)
    resumed = build_store(load(corpus), out, stft=STFT, geometry=GEOMETRY)
    assert resumed.count("skipped") == 3 and resumed.count("built") == len(resumed.outcomes) - 3
    assert_same_contents(store_contents(built_store), store_contents(out))


def test_append_extends_without_moving_tracks(corpus, built_store, tmp_path):
    out = tmp_path / "store"
    first = load(corpus, ("pairs", "vocals"))
    build_store(first, out, stft=STFT, geometry=GEOMETRY)
    before = open_store(out)
    with pytest.raises(VRDataError, match="--append"):
        build_store(load(corpus), out)
    result = build_store(load(corpus), out, append=True)
    assert result.count("skipped") == len(before.tracks)
    after = open_store(out)
    assert [t.to_json() for t in after.tracks[: len(before.tracks)]] == [t.to_json() for t in before.tracks]
    # Appending in manifest order gives the same store as building everything at once.
    assert_same_contents(store_contents(built_store), store_contents(out))


def test_item_ids_that_cannot_be_keys_are_refused(corpus, tmp_path):
    manifest = read_manifest(corpus["vocals"])
    manifest.items[0].id = "take.1/../x"
    with pytest.raises(VRDataError, match="not usable as a store key"):
        build_store([manifest], tmp_path / "store", stft=STFT, geometry=GEOMETRY)


def test_append_killed_after_saving_its_plan_still_builds_the_new_tracks(corpus, tmp_path):
    from vr_data.store.plan import BuildPlan

    out = tmp_path / "store"
    build_store(load(corpus, ("pairs",)), out, stft=STFT, geometry=GEOMETRY)
    plan = BuildPlan.load(out / "plan.json")
    plan.extend(load(corpus, ("vocals",)))
    plan.save(out / "plan.json")  # as an append killed right after writing its plan
    assert open_store(out).tracks_by_role("vocal") == []
    result = build_store(load(corpus, ("pairs", "vocals")), out, append=True)
    assert not result.already_complete and result.count("built") == 3
    assert len(open_store(out).tracks_by_role("vocal")) == 3
