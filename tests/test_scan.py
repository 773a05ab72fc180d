"""vrdata scan: layouts, pair matching and checks, reject reasons, splits, rescans, portability."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import tone, write_pair
from vr_data import errors
from vr_data.audio import write_audio
from vr_data.errors import VRDataError
from vr_data.catalog.layouts import pair_key
from vr_data.catalog.manifest import read_manifest, resolve_under, write_manifest
from vr_data.catalog.sources import load_item_source
from vr_data.catalog.scan import ScanOptions, estimate_offset, scan, verify_manifest


@pytest.mark.parametrize(
    "mixture, instrumental",
    [
        ("Song.wav", "Song.wav"),
        ("Song_mix.wav", "Song_inst.wav"),
        ("Song (Mix).flac", "Song (Instrumental).flac"),
        ("Song-mix.wav", "song instrumental.wav"),
        ("Song [Mix].wav", "Song [Karaoke].wav"),
        ("Song_mixture.wav", "Song_Instrumental.wav"),
    ],
)
def test_pair_key_strips_usual_suffixes(mixture, instrumental):
    assert pair_key(mixture.rsplit(".", 1)[0]) == pair_key(instrumental.rsplit(".", 1)[0])


def test_pairs_matched_by_name_not_sort_order(tmp_path):
    # Sort order would pair "a" with "b_inst": the scan must not.
    write_pair(tmp_path, "a_mix.wav", "a_inst.wav", seed=1)
    write_pair(tmp_path, "c_mix.wav", "c_inst.wav", seed=3)
    write_audio(tmp_path / "instruments" / "b_inst.wav", tone(2.0, seed=2), 44100)
    result = scan(tmp_path, ScanOptions(layout="pairs"))
    items = {item.files["mixture"].path: item.files["instrumental"].path for item in result.manifest.items}
    assert items == {"mixtures/a_mix.wav": "instruments/a_inst.wav", "mixtures/c_mix.wav": "instruments/c_inst.wav"}
    assert [(r.path, r.code) for r in result.rejects] == [("instruments/b_inst.wav", errors.UNMATCHED)]
    for item in result.manifest.items:  # matched partners really belong together
        assert item.checks["correlation"] > 0.3 and item.checks["offset_samples"] == 0


def test_pair_pattern_option(tmp_path):
    write_pair(tmp_path, "001_vocal-mix.wav", "001_backing.wav")
    write_audio(tmp_path / "mixtures" / "readme-take.wav", tone(2.0), 44100)
    result = scan(tmp_path, ScanOptions(layout="pairs", pair_pattern=r"^(?P<key>\d+)_"))
    assert len(result.manifest.items) == 1
    assert [(r.path, r.code) for r in result.rejects] == [("mixtures/readme-take.wav", errors.UNMATCHED)]


def test_ambiguous_pairs_are_rejected_not_guessed(tmp_path):
    write_pair(tmp_path, "Song_mix.wav", "Song_inst.wav")
    write_audio(tmp_path / "instruments" / "Song (Instrumental).wav", tone(2.0), 44100)
    result = scan(tmp_path, ScanOptions(layout="pairs"))
    assert result.manifest.items == []
    assert {r.code for r in result.rejects} == {errors.AMBIGUOUS}
    assert len(result.rejects) == 3


def test_known_offset_is_measured_and_rejected(tmp_path):
    write_pair(tmp_path, "Late_mix.wav", "Late_inst.wav", seconds=4.0, offset_samples=300)
    rejected = scan(tmp_path, ScanOptions(layout="pairs", max_offset_ms=5.0))
    assert [r.code for r in rejected.rejects] == [errors.OFFSET]
    assert "300 samples" in rejected.rejects[0].reason
    accepted = scan(tmp_path, ScanOptions(layout="pairs", max_offset_ms=20.0))
    assert accepted.manifest.items[0].checks["offset_samples"] == 300


def test_estimate_offset_sign_and_value():
    rng = np.random.default_rng(0)
    mixture = rng.standard_normal(20000)
    delayed = np.concatenate([np.zeros(123), mixture[:-123]])
    assert estimate_offset(mixture, delayed, 1000)[0] == 123
    assert estimate_offset(delayed, mixture, 1000)[0] == -123


def test_length_mismatch_rejected(tmp_path):
    write_pair(tmp_path, "Long_mix.wav", "Long_inst.wav", seconds=4.0, instrumental_seconds=2.5)
    result = scan(tmp_path, ScanOptions(layout="pairs", length_tolerance=0.5))
    assert [r.code for r in result.rejects] == [errors.LENGTH_MISMATCH]
    assert "1.50 s" in result.rejects[0].reason


def test_every_file_reject_reason_in_a_folder_scan(tmp_path):
    root = tmp_path / "vocals"
    write_audio(root / "good.flac", tone(2.0), 44100)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnope")
    sf.write(str(root / "empty.wav"), np.zeros((0, 2), np.float32), 44100)
    write_audio(root / "short.wav", tone(0.3), 44100)
    write_audio(root / "silent.wav", np.zeros((2, 88200), np.float32), 44100)
    sf.write(str(root / "nan.wav"), np.full((88200, 2), np.inf, np.float32), 44100, subtype="FLOAT")
    write_audio(root / "surround.wav", tone(2.0, channels=4), 44100)
    outside = tmp_path / "outside.wav"
    write_audio(outside, tone(2.0), 44100)
    os.symlink(outside, root / "escape.wav")
    (root / "notes.txt").write_text("not audio, ignored")
    result = scan(root, ScanOptions(layout="vocals", min_seconds=1.0))
    assert [item.files["audio"].path for item in result.manifest.items] == ["good.flac"]
    assert {r.path: r.code for r in result.rejects} == {
        "corrupt.wav": errors.UNREADABLE, "empty.wav": errors.EMPTY, "short.wav": errors.TOO_SHORT,
        "silent.wav": errors.SILENT, "nan.wav": errors.NON_FINITE, "surround.wav": errors.CHANNELS,
        "escape.wav": errors.ESCAPES_ROOT,
    }
    assert all(r.reason and "\n" not in r.reason for r in result.rejects)
    downmixed = scan(root, ScanOptions(layout="vocals", downmix=True))
    assert "surround.wav" in {i.files["audio"].path for i in downmixed.manifest.items}


def test_bad_pair_member_refuses_the_pair_and_names_the_partner(tmp_path):
    write_pair(tmp_path, "Song_mix.wav", "Song_inst.wav")
    (tmp_path / "instruments" / "Song_inst.wav").write_bytes(b"garbage")
    result = scan(tmp_path, ScanOptions(layout="pairs"))
    assert {r.path: r.code for r in result.rejects} == {
        "instruments/Song_inst.wav": errors.UNREADABLE, "mixtures/Song_mix.wav": errors.PARTNER_REFUSED}


def test_musdb_layout_sums_stems(tmp_path):
    for subset, name in (("train", "A - One"), ("test", "B - Two")):
        track = tmp_path / subset / name
        stems = {stem: tone(2.0, seed=i) * 0.3 for i, stem in enumerate(("vocals", "drums", "bass", "other"))}
        stems["mixture"] = sum(stems.values())
        for stem, audio in stems.items():
            write_audio(track / f"{stem}.wav", audio, 44100, subtype="FLOAT")
    (tmp_path / "train" / "C - Incomplete").mkdir()
    write_audio(tmp_path / "train" / "C - Incomplete" / "mixture.wav", tone(2.0), 44100)
    result = scan(tmp_path, ScanOptions(layout="musdb", group_by="artist"))
    assert {item.split for item in result.manifest.items} == {"train", "test"}  # never valid: no leak
    assert [r.code for r in result.rejects] == [errors.MISSING]
    item = next(i for i in result.manifest.items if i.split == "train")
    assert item.sources["instrumental"] == ["drums", "bass", "other"] and item.group == "a"
    mixture = load_item_source(result.manifest, item, "mixture")
    instrumental = load_item_source(result.manifest, item, "instrumental")
    vocal = load_item_source(result.manifest, item, "vocal")
    np.testing.assert_allclose(mixture, instrumental + vocal, atol=1e-5)


@pytest.mark.parametrize("layout, role", [("instrumentals", "instrumental"), ("pretrain", "pretrain")])
def test_folder_layouts_recurse(tmp_path, layout, role):
    write_audio(tmp_path / "album1" / "a.ogg", tone(2.0, 32000), 32000)
    write_audio(tmp_path / "album1" / "b.mp3", tone(2.0, 48000, seed=1), 48000)
    write_audio(tmp_path / "album2" / "c.flac", tone(2.0, 16000, channels=1, seed=2), 16000)
    result = scan(tmp_path, ScanOptions(layout=layout, group_by="folder"))
    assert result.manifest.role == role and len(result.manifest.items) == 3
    assert {i.group for i in result.manifest.items} == {"album1", "album2"}
    assert {i.files["audio"].format for i in result.manifest.items} == {"ogg", "mp3", "flac"}
    assert {i.files["audio"].channels for i in result.manifest.items} == {1, 2}


def _many_vocals(root, count, start=0):
    for index in range(start, start + count):
        write_audio(root / f"Artist{index % 7} - Take {index}.wav", tone(1.2, seed=index), 44100)


def test_split_is_stable_when_files_are_added_and_groups_never_straddle(tmp_path):
    _many_vocals(tmp_path, 30)
    first = scan(tmp_path, ScanOptions(layout="vocals", valid_fraction=0.3, group_by="artist"))
    splits = {item.id: item.split for item in first.manifest.items}
    assert set(splits.values()) == {"train", "valid"}
    _many_vocals(tmp_path, 10, start=30)
    second = scan(tmp_path, ScanOptions(layout="vocals", valid_fraction=0.3, group_by="artist"),
                  previous=first.manifest)
    assert len(second.manifest.items) == 40
    for item in second.manifest.items:
        if item.id in splits:
            assert item.split == splits[item.id]
    by_group = {}
    for item in second.manifest.items:
        by_group.setdefault(item.group, set()).add(item.split)
    assert all(len(s) == 1 for s in by_group.values())


def test_rescan_is_incremental(tmp_path):
    _many_vocals(tmp_path, 4)
    first = scan(tmp_path, ScanOptions(layout="vocals"))
    assert (first.hashed, first.reused) == (4, 0)
    second = scan(tmp_path, ScanOptions(layout="vocals"), previous=first.manifest)
    assert (second.hashed, second.reused) == (0, 4)
    assert [i.to_json() for i in second.manifest.items] == [i.to_json() for i in first.manifest.items]
    changed = tmp_path / "Artist1 - Take 1.wav"
    write_audio(changed, tone(1.5, seed=99), 44100)
    third = scan(tmp_path, ScanOptions(layout="vocals"), previous=second.manifest)
    assert (third.hashed, third.reused) == (1, 3)
    entry = next(i for i in third.manifest.items if i.files["audio"].path == changed.name).files["audio"]
    assert abs(entry.duration - 1.5) < 1e-6


def test_pair_checks_reused_on_rescan(tmp_path):
    write_pair(tmp_path, "Song_mix.wav", "Song_inst.wav")
    first = scan(tmp_path, ScanOptions(layout="pairs"))
    second = scan(tmp_path, ScanOptions(layout="pairs"), previous=first.manifest)
    assert second.hashed == 0 and second.manifest.items[0].checks == first.manifest.items[0].checks


def test_manifest_is_portable_across_roots(tmp_path):
    library = tmp_path / "machine_a" / "vocals"
    _many_vocals(library, 3)
    result = scan(library, ScanOptions(layout="vocals"))
    manifest_path = write_manifest(tmp_path / "vocals.jsonl", result.manifest)
    moved = tmp_path / "machine_b" / "data" / "vox"
    shutil.copytree(library, moved)
    shutil.rmtree(tmp_path / "machine_a")
    assert verify_manifest(read_manifest(manifest_path))[0].code == errors.MISSING
    rerooted = read_manifest(manifest_path, root=moved)
    assert verify_manifest(rerooted) == []
    item = rerooted.items[0]
    assert load_item_source(rerooted, item, "vocal").shape[0] == 2
    # A changed file is named by verify.
    write_audio(moved / item.files["audio"].path, tone(1.2, seed=1234), 44100)
    problems = verify_manifest(rerooted)
    assert [(p.path, p.code) for p in problems] == [(item.files["audio"].path, errors.HASH_MISMATCH)]


@pytest.mark.parametrize("relative", ["../etc/passwd", "/etc/passwd", "a/../../b.wav", "C:/x.wav"])
def test_paths_escaping_the_root_are_refused(tmp_path, relative):
    with pytest.raises(VRDataError) as raised:
        resolve_under(tmp_path, relative)
    assert raised.value.code == errors.ESCAPES_ROOT


def test_manifest_with_escaping_path_fails_verify(tmp_path):
    _many_vocals(tmp_path / "lib", 1)
    manifest = scan(tmp_path / "lib", ScanOptions(layout="vocals")).manifest
    path = write_manifest(tmp_path / "m.jsonl", manifest)
    text = path.read_text().replace('"path": "Artist0 - Take 0.wav"', '"path": "../../etc/passwd"')
    path.write_text(text)
    problems = verify_manifest(read_manifest(path))
    assert [p.code for p in problems] == [errors.ESCAPES_ROOT]


def test_read_manifest_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "something-else"}\n')
    with pytest.raises(VRDataError, match="bad.jsonl"):
        read_manifest(bad)
    with pytest.raises(VRDataError, match="nothere.jsonl"):
        read_manifest(tmp_path / "nothere.jsonl")
