"""vrdata scan on the folders users really have (issue 11, points 1-7): MUSDB songs without
drums, bass or vocals, the test split, symlinks out of the root, FIFOs, truncated files, vague
reasons, interrupted scans, and settings refused before any file is read."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from vr_data import errors
from vr_data.audio import write_audio
from vr_data.audio.decode import TRUNCATED, UNAVAILABLE, decode_file
from vr_data.catalog.manifest import SPLITS, read_manifest, split_for, split_manifest_spec, write_manifest
from vr_data.catalog.scan import ScanJournal, ScanOptions, previous_manifest, scan
from vr_data.errors import ConfigError, VRDataError

SILENT = np.zeros((2, 88200), np.float32)


def _musdb_track(folder, seed: int, silent: tuple[str, ...] = ()) -> None:
    """A 2 s MUSDB18-HQ track folder; the `silent` stems are all zeros (the mixture is the sum)."""
    stems = {stem: tone(2.0, seed=seed + i) * 0.25 for i, stem in enumerate(("vocals", "drums", "bass", "other"))}
    for stem in silent:
        stems[stem] = SILENT.copy()
    stems["mixture"] = sum(stems.values())
    for stem, audio in stems.items():
        write_audio(folder / f"{stem}.wav", audio, 44100)


def test_musdb_with_silent_drums_bass_or_vocals_scans_every_track(tmp_path):
    _musdb_track(tmp_path / "train" / "A - Full", 0)
    _musdb_track(tmp_path / "train" / "B - No Rhythm Section", 10, silent=("drums", "bass"))
    _musdb_track(tmp_path / "test" / "C - Instrumental", 20, silent=("vocals",))
    _musdb_track(tmp_path / "test" / "D - A Cappella", 30, silent=("drums", "bass", "other"))
    result = scan(tmp_path, ScanOptions(layout="musdb"))
    names = {item.files["mixture"].path.split("/")[1] for item in result.manifest.items}
    assert names == {"A - Full", "B - No Rhythm Section", "C - Instrumental"}
    # Only the song whose summed instrumental is silent is refused, once, naming the stems summed.
    assert [(r.path, r.code) for r in result.rejects] == [("test/D - A Cappella", errors.SILENT)]
    assert "instrumental (drums + bass + other)" in result.rejects[0].reason
    assert "every sample is zero" in result.rejects[0].reason


def test_silence_dbfs_minus_inf_keeps_all_zero_files(tmp_path):
    write_audio(tmp_path / "zeros.wav", SILENT, 44100)
    refused = scan(tmp_path, ScanOptions(layout="vocals"))
    assert [(r.code, r.reason) for r in refused.rejects] == [(errors.SILENT, "silent (every sample is zero)")]
    kept = scan(tmp_path, ScanOptions(layout="vocals", silence_dbfs=float("-inf")))
    assert len(kept.manifest.items) == 1 and kept.rejects == []
    assert kept.manifest.options["silence_dbfs"] is None  # -inf is not JSON


def test_musdb_test_songs_stay_in_the_test_split(tmp_path):
    _musdb_track(tmp_path / "train" / "A - One", 0)
    _musdb_track(tmp_path / "test" / "B - Two", 10)
    result = scan(tmp_path, ScanOptions(layout="musdb", valid_fraction=0.5))
    splits = {item.tags[0]: item.split for item in result.manifest.items}
    assert splits == {"musdb:train": "train", "musdb:test": "test"}
    assert SPLITS == ("train", "valid", "test")
    path = write_manifest(tmp_path / "musdb.jsonl", result.manifest)
    assert {item.split for item in read_manifest(path).items} == {"train", "test"}
    # Drawn splits are train/valid only: test is never drawn at random.
    assert {split_for(f"key-{i}", 0.5) for i in range(200)} == {"train", "valid"}


def test_musdb_symlinks_out_of_the_root_are_escapes_root(tmp_path):
    root, outside = tmp_path / "musdb", tmp_path / "elsewhere"
    _musdb_track(root / "train" / "A - Inside", 0)
    _musdb_track(outside / "B - Outside", 10)
    _musdb_track(root / "train" / "C - Stem Outside", 20)
    (root / "train" / "C - Stem Outside" / "drums.wav").unlink()
    os.symlink(outside / "B - Outside" / "drums.wav", root / "train" / "C - Stem Outside" / "drums.wav")
    os.symlink(outside / "B - Outside", root / "train" / "B - Outside")
    _musdb_track(outside / "test" / "E - Far", 40)
    os.symlink(outside / "test", root / "test")
    result = scan(root, ScanOptions(layout="musdb"))
    assert [item.files["mixture"].path for item in result.manifest.items] == ["train/A - Inside/mixture.wav"]
    assert {(r.path, r.code) for r in result.rejects} == {
        ("train/B - Outside", errors.ESCAPES_ROOT),
        ("train/C - Stem Outside/drums.wav", errors.ESCAPES_ROOT),
        ("train/C - Stem Outside", errors.PARTNER_REFUSED),
        ("test", errors.ESCAPES_ROOT),
    }


@pytest.mark.parametrize("layout", ["vocals", "pairs"])
def test_symlinked_folder_out_of_the_root_gets_a_reject_line(tmp_path, layout):
    root, outside = tmp_path / "lib", tmp_path / "elsewhere"
    write_audio(outside / "far.wav", tone(2.0), 44100)
    folder = root if layout == "vocals" else root / "mixtures"
    if layout == "pairs":
        (root / "instruments").mkdir(parents=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, folder / "linked")
    result = scan(root, ScanOptions(layout=layout))
    rel = "linked" if layout == "vocals" else "mixtures/linked"
    assert [(r.path, r.code) for r in result.rejects] == [(rel, errors.ESCAPES_ROOT)]
    assert "folder" in result.rejects[0].reason


@pytest.mark.timeout(60)
def test_a_fifo_named_like_audio_is_refused_without_opening_it(tmp_path):
    write_audio(tmp_path / "good.wav", tone(2.0), 44100)
    os.mkfifo(tmp_path / "pipe.wav")  # opening it for reading would block until a writer comes
    result = scan(tmp_path, ScanOptions(layout="vocals"))
    assert len(result.manifest.items) == 1
    assert [(r.path, r.code, r.reason) for r in result.rejects] == [
        ("pipe.wav", errors.UNREADABLE, "not a regular file: a named pipe (FIFO)")]
    with pytest.raises(VRDataError, match="named pipe"):  # the decoder refuses it too (a manifest path)
        decode_file(tmp_path / "pipe.wav")


@pytest.mark.parametrize("extension", ["wav", "ogg", "mp3"])
def test_truncated_files_are_refused_with_the_lengths(tmp_path, extension):
    full = tmp_path / f"full.{extension}"
    write_audio(full, tone(4.0, seed=3), 44100)
    data = full.read_bytes()
    (tmp_path / f"cut.{extension}").write_bytes(data[: len(data) // 2])
    result = scan(tmp_path, ScanOptions(layout="vocals"))
    assert [(r.path, r.code) for r in result.rejects] == [(f"cut.{extension}", TRUNCATED)]
    assert "truncated" in result.rejects[0].reason
    if extension != "ogg":  # Ogg declares no length: its missing end-of-stream page is the proof
        assert "of the 4.00 s its header declares" in result.rejects[0].reason
    entry = result.manifest.items[0].files["audio"]
    assert entry.samples == sf.read(str(full))[0].shape[0]  # the decoded length is what is recorded


def test_truncated_flac_and_tiny_mp3_have_reasons_that_say_so(tmp_path):
    write_audio(tmp_path / "full.flac", tone(4.0), 44100)
    write_audio(tmp_path / "full.mp3", tone(4.0), 44100)
    flac = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (tmp_path / "tiny.mp3").write_bytes((tmp_path / "full.mp3").read_bytes()[:100])
    reasons = {r.path: r.reason for r in scan(tmp_path, ScanOptions(layout="vocals")).rejects}
    assert "truncated or damaged" in reasons["cut.flac"]
    assert "unknown or damaged header, or too short" in reasons["tiny.mp3"]
    assert "pipe" not in reasons["tiny.mp3"]


def test_permission_denied_is_named_and_unavailable(tmp_path, monkeypatch):
    write_audio(tmp_path / "locked.wav", tone(2.0), 44100)
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):  # root reads anything: simulate the refusal
        if str(path).endswith("locked.wav"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("vr_data.audio.decode.os.open", refuse)
    result = scan(tmp_path, ScanOptions(layout="vocals"))
    assert [(r.code, r.reason) for r in result.rejects] == [(UNAVAILABLE, "cannot open file (permission denied)")]


def _vocals(folder, count):
    for index in range(count):
        write_audio(folder / f"Take {index}.wav", tone(1.2, seed=index), 44100)


def test_interrupted_scan_resumes_from_its_journal(tmp_path):
    _vocals(tmp_path / "lib", 5)
    options = ScanOptions(layout="vocals")
    journal = ScanJournal(tmp_path / ".v.jsonl.journal")
    finished = []

    def stop_after_two(item, rejects):
        finished.append(item)
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(tmp_path / "lib", options, on_item=stop_after_two, journal=journal)
    assert len(journal.path.read_text().splitlines()) == 1 + 2  # header + the two finished candidates
    resumed = scan(tmp_path / "lib", options, journal=ScanJournal(journal.path))
    assert (resumed.resumed, resumed.hashed, resumed.reused) == (2, 3, 2)
    fresh = scan(tmp_path / "lib", options)
    assert [i.to_json() for i in resumed.manifest.items] == [i.to_json() for i in fresh.manifest.items]
    # A changed file, or other options, are not taken from the journal.
    write_audio(tmp_path / "lib" / "Take 0.wav", tone(1.5, seed=99), 44100)
    assert scan(tmp_path / "lib", options, journal=ScanJournal(journal.path)).hashed == 1
    other = ScanOptions(layout="vocals", min_seconds=0.5)
    assert scan(tmp_path / "lib", other, journal=ScanJournal(journal.path)).resumed == 0


@pytest.mark.parametrize("settings, message", [
    ({"valid_fraction": -0.1}, "--valid-fraction"),
    ({"valid_fraction": 1.5}, "--valid-fraction"),
    ({"group_by": "foo"}, "--group-by 'foo'"),
    ({"group_by": "regex:(unclosed"}, "not a valid regular expression"),
    ({"layout": "pairs", "pair_pattern": r"^(\d+)_"}, "(?P<key>...)"),
    ({"layout": "pairs", "pair_pattern": "(?P<key>["}, "not a valid regular expression"),
    ({"min_seconds": -1.0}, "--min-seconds"),
    ({"layout": "nope"}, "--layout 'nope'"),
])
def test_impossible_scan_settings_are_refused_before_reading(settings, message):
    with pytest.raises(ConfigError) as raised:
        ScanOptions(**{"layout": "vocals", **settings})
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_an_empty_valid_split_is_warned_about(tmp_path):
    for index in range(6):  # these six ids all hash to train at 0.1
        write_audio(tmp_path / f"S0 {index}.wav", tone(1.2, seed=index), 44100)
    result = scan(tmp_path, ScanOptions(layout="vocals", valid_fraction=0.1))
    assert {item.split for item in result.manifest.items} == {"train"}
    assert result.warnings == ["the valid split is empty: none of 6 items fell in the 0.1 fraction drawn for "
                               "valid; raise --valid-fraction or add items"]
    assert scan(tmp_path, ScanOptions(layout="vocals", valid_fraction=0.0)).warnings == []


def test_out_holding_another_librarys_manifest_is_refused_unless_forced(tmp_path):
    _vocals(tmp_path / "a", 1)
    _vocals(tmp_path / "b", 1)
    out = write_manifest(tmp_path / "m.jsonl", scan(tmp_path / "a", ScanOptions(layout="vocals")).manifest)
    with pytest.raises(VRDataError, match="library 'a'"):
        previous_manifest(out, tmp_path / "b", ScanOptions(layout="vocals"))
    assert previous_manifest(out, tmp_path / "b", ScanOptions(layout="vocals"), force=True) is None
    assert previous_manifest(out, tmp_path / "a", ScanOptions(layout="vocals")).library == "a"
    (tmp_path / "notes.jsonl").write_text("my notes\n")
    with pytest.raises(VRDataError, match="--force"):
        previous_manifest(tmp_path / "notes.jsonl", tmp_path / "a", ScanOptions(layout="vocals"))


@pytest.fixture
def manifest_lines(tmp_path):
    _vocals(tmp_path / "lib", 1)
    path = write_manifest(tmp_path / "m.jsonl", scan(tmp_path / "lib", ScanOptions(layout="vocals")).manifest)
    header, item = (json.loads(line) for line in path.read_text().splitlines())
    return path, header, item


def _edit(header: dict, item: dict, where: str, key: str, value) -> None:
    record = {"header": header, "item": item, "file": item["files"]["audio"]}[where]
    if value is _DELETE:
        del record[key]
    else:
        record[key] = value


_DELETE = object()


@pytest.mark.parametrize("where, key, value, message", [
    ("header", "schema", "x", "schema must be an integer"),
    ("header", "role", _DELETE, "no 'role'"),
    ("header", "root", _DELETE, "no 'root'"),
    ("header", "role", "choir", "role 'choir'"),
    ("file", "path", 7, "'path' must be a non-empty string"),
    ("file", "sample_rate", 0, "'sample_rate' must be an integer >= 1"),
    ("file", "samples", "12", "'samples' must be an integer >= 0"),
    ("file", "samples", -5, "'samples' must be an integer >= 0"),
    ("item", "sources", {"vocal": ["nope"]}, "unknown file keys ['nope']"),
    ("item", "split", "dev", "split 'dev'"),
    ("item", "id", "take-1\n", "'id' must be a non-empty string"),
])
def test_damaged_manifest_fields_are_one_line_errors(manifest_lines, where, key, value, message):
    path, header, item = manifest_lines
    _edit(header, item, where, key, value)
    path.write_text(json.dumps(header) + "\n" + json.dumps(item) + "\n")
    with pytest.raises(VRDataError) as raised:
        read_manifest(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_files_that_are_not_manifests_are_named(tmp_path):
    write_audio(tmp_path / "song.wav", tone(1.0), 44100)
    with pytest.raises(VRDataError, match="not UTF-8 text"):
        read_manifest(tmp_path / "song.wav")
    (tmp_path / "m.rejects.jsonl").write_text('{"code": "silent", "path": "a.wav", "reason": "silent"}\n')
    with pytest.raises(VRDataError, match="rejects file"):
        read_manifest(tmp_path / "m.rejects.jsonl")
    with pytest.raises(VRDataError, match="directory"):
        read_manifest(tmp_path)


def test_manifest_spec_splits_at_the_equals_sign_unless_the_file_exists(tmp_path):
    assert split_manifest_spec("m.jsonl=/data/x") == (tmp_path.__class__("m.jsonl"), tmp_path.__class__("/data/x"))
    assert split_manifest_spec("m.jsonl") == (tmp_path.__class__("m.jsonl"), None)
    odd = tmp_path / "a=b.jsonl"
    odd.write_text("")
    assert split_manifest_spec(str(odd)) == (odd, None)


def test_a_zero_byte_wav_is_unreadable_and_a_header_without_frames_is_empty(tmp_path):
    """As docs/manifest.md says: `empty` is an audio file with no samples; 0 bytes is no audio."""
    sf.write(str(tmp_path / "header.wav"), np.zeros((0, 2), np.float32), 44100)
    (tmp_path / "zero.wav").write_bytes(b"")
    codes = {}
    for name in ("header.wav", "zero.wav"):
        with pytest.raises(VRDataError) as caught:
            decode_file(tmp_path / name)
        codes[name] = caught.value.code
    assert codes == {"header.wav": errors.EMPTY, "zero.wav": errors.UNREADABLE}
