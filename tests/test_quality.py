"""Content fingerprints, duplicate and leak search, exclusion lists (issue 23).

The fingerprint tests change one thing at a time (codec, rate, gain, channels, offset, trim,
excerpt) and check the copy still matches its original at the right offset, while an unrelated
song does not. The end-to-end test is the issue's: a MUSDB-layout test song re-encoded into a
pairs library's train split; `stats --fail-on-leak` exits 1 and `build-shards --exclude` leaves
it out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from typer.testing import CliRunner

from pipelines.vrdata import app
from vr_data.audio import write_audio
from vr_data.catalog.exclusions import Exclusion, read_exclusions, write_exclusions
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.dsp.fingerprint import (FRAME_SECONDS, HASH_BITS, decode, encode, fingerprint_audio, is_current,
                                      sliding_max, within_budget)
from vr_data.errors import VRDataError
from vr_data.quality.search import MIN_SECONDS, MIN_VOTES, find_matches
from vr_data.store import open_store
from vr_data.testing.synth import music_like

RATE = 44100
runner = CliRunner()


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    return music_like(20.0, RATE, seed=11)


def _through_file(tmp_path: Path, audio: np.ndarray, rate: int, name: str, subtype: str | None = None):
    """`audio` written as `name` (format from the extension) and read back: a real re-encoding."""
    path = tmp_path / name
    with sf.SoundFile(str(path), "w", rate, audio.shape[0], subtype=subtype) as handle:
        for start in range(0, audio.shape[1], 16384):  # blockwise: libsndfile's Vorbis writer crashes on long writes
            handle.write(np.ascontiguousarray(audio[:, start:start + 16384].T))
    data, read_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, read_rate


def _match(original: np.ndarray, copy: np.ndarray, copy_rate: int = RATE):
    matches = find_matches([fingerprint_audio(original, RATE), fingerprint_audio(copy, copy_rate)])
    return matches[0] if matches else None


@pytest.mark.parametrize("change", ["mp3", "ogg", "pcm16", "48k", "22k", "gain+6", "gain-6", "mono", "one_channel"])
def test_a_transformed_copy_matches_its_original_at_offset_zero(song, tmp_path, change):
    rate = RATE
    if change in ("mp3", "ogg", "pcm16"):
        name, subtype = {"mp3": ("c.mp3", None), "ogg": ("c.ogg", "VORBIS"), "pcm16": ("c.wav", "PCM_16")}[change]
        copy, rate = _through_file(tmp_path, song, RATE, name, subtype)
    elif change in ("48k", "22k"):
        rate = 48000 if change == "48k" else 22050
        copy = soxr.resample(song.T, RATE, rate).T
    elif change.startswith("gain"):
        copy = song * np.float32(10 ** (int(change[4:]) / 20))
    elif change == "mono":
        copy = np.repeat(song.mean(axis=0, keepdims=True), 2, axis=0)
    else:
        copy = song.mean(axis=0, keepdims=True)
    match = _match(song, copy, rate)
    assert match is not None and match.votes >= 4 * MIN_VOTES
    # mp3 decoders prepend up to ~50 ms of padding: within two frames of zero
    assert abs(match.offset_seconds) <= 2 * FRAME_SECONDS


@pytest.mark.parametrize("cut", ["delay", "trim", "excerpt"])
def test_an_offset_trimmed_or_excerpted_copy_matches_at_its_offset(song, cut):
    if cut == "delay":  # 1.234 s of silence first: the song is 1.234 s later in the copy
        copy, expected, seconds = np.concatenate([np.zeros((2, int(1.234 * RATE)), np.float32), song], axis=1), 1.234, 20
    elif cut == "trim":  # the first 2.517 s cut off: the song is 2.517 s earlier in the copy
        copy, expected, seconds = song[:, int(2.517 * RATE):], -2.517, 17.5
    else:  # 6 s from 7.3 s on
        copy, expected, seconds = song[:, int(7.3 * RATE):int(13.3 * RATE)], -7.3, 6
    match = _match(song, copy)
    assert match is not None and match.votes >= MIN_VOTES
    assert abs(match.offset_seconds - expected) <= 2 * FRAME_SECONDS
    assert seconds * 0.7 <= match.matched_seconds <= seconds + 1


def test_unrelated_songs_do_not_match():
    songs = [fingerprint_audio(music_like(20.0, RATE, seed=seed), RATE) for seed in range(6)]
    assert find_matches(songs) == []


def test_files_of_one_owner_are_never_compared(song):
    prints = [fingerprint_audio(song, RATE), fingerprint_audio(song * np.float32(0.5), RATE)]
    assert len(find_matches(prints)) == 1
    assert find_matches(prints, owners=[7, 7]) == []


def test_fingerprint_encoding_round_trips_and_refuses_damage(song):
    hashes, times = fingerprint_audio(song, RATE)
    text = encode(hashes, times)
    decoded = decode(text)
    assert np.array_equal(decoded[0], hashes) and np.array_equal(decoded[1], times)
    with pytest.raises(ValueError, match="version"):
        decode("xx9:" + text.split(":", 1)[1])
    with pytest.raises(ValueError, match="damaged"):
        decode(text[:-8] + "AAAAAAAA")


def test_sliding_max_equals_a_naive_window_maximum():
    values = np.random.default_rng(0).standard_normal((37, 23)).astype(np.float32)
    for radius in (0, 1, 3, 6, 20):
        for axis in (0, 1):
            moved = np.moveaxis(values, axis, 0)
            naive = np.stack([moved[max(0, i - radius):i + radius + 1].max(axis=0) for i in range(len(moved))])
            assert np.array_equal(sliding_max(values, radius, axis), np.moveaxis(naive, 0, axis))


def test_within_budget_equals_a_naive_count_of_stronger_neighbours():
    rng = np.random.default_rng(0)
    for _ in range(50):
        count = int(rng.integers(0, 60))
        times = np.sort(rng.integers(0, 40, count))
        strength = rng.integers(0, 5, count).astype(np.float32)  # many ties: the earlier index wins them
        naive = np.array([sum(abs(times[j] - times[i]) <= 3 and (strength[j] > strength[i]
                                                                 or (strength[j] == strength[i] and j < i))
                              for j in range(count)) < 2 for i in range(count)], dtype=bool)
        assert np.array_equal(within_budget(times, strength, 3, 2), naive)


def test_hashes_fit_their_bits_and_survive_encoding(song):
    hashes, times = fingerprint_audio(song, RATE)
    assert len(hashes) > 10 * 20 and int(hashes.max()) < 1 << HASH_BITS
    wide = hashes | np.uint32(1 << 31)  # the encoding keeps all 32 bits
    assert np.array_equal(decode(encode(wide, times))[0], wide)


def _synthetic_prints(rng: np.random.Generator, files: int, landmarks: int, copies: int):
    prints = [(rng.integers(0, 1 << 12, landmarks, dtype=np.uint32), np.sort(rng.integers(0, 600, landmarks)).astype(np.int32))
              for _ in range(files)]
    for number in range(copies):  # half the landmarks of an earlier file, 5..40 frames later
        hashes, times = prints[number * 3]
        keep = rng.random(len(hashes)) < 0.5
        prints.append((hashes[keep], times[keep] + 5 + number))
    return prints


def test_the_search_gives_the_same_matches_whatever_its_slices():
    prints = _synthetic_prints(np.random.default_rng(1), 40, 300, 8)
    whole = find_matches(prints, min_votes=3, slice_landmarks=10**9)
    assert whole == find_matches(prints, min_votes=3, slice_landmarks=50)
    planted = {(number * 3, 40 + number): (5 + number) * FRAME_SECONDS for number in range(8)}
    found = {(m.a, m.b): m for m in whole}
    for pair, offset in planted.items():
        assert pair in found and found[pair].offset_seconds == pytest.approx(offset)


def test_agreeing_landmarks_must_fall_in_min_seconds_distinct_seconds():
    rng = np.random.default_rng(4)

    def random_print():
        return (rng.integers(0, 1 << 28, 2000, dtype=np.uint32), np.sort(rng.integers(0, 940, 2000)).astype(np.int32))

    song, other = random_print(), random_print()

    def sharing(chosen):  # `other` with 30 of the song's landmarks, 25 frames later
        hashes = np.concatenate([other[0], song[0][chosen]])
        times = np.concatenate([other[1], song[1][chosen] + 25])
        order = np.argsort(times, kind="stable")
        return hashes[order], times[order]

    second = int(round(1 / FRAME_SECONDS))
    burst = sharing(np.flatnonzero((song[1] >= 300) & (song[1] < 300 + second))[:30])   # within one second
    spread = sharing(np.flatnonzero(song[1] >= 300)[::20][:30])                        # over many seconds
    assert find_matches([song, burst], min_votes=20) == []
    assert find_matches([song, burst], min_votes=20, min_seconds=0.5)
    [match] = find_matches([song, spread], min_votes=20)
    assert match.agreeing_seconds >= MIN_SECONDS and match.offset_seconds == pytest.approx(25 * FRAME_SECONDS)


def test_the_stop_list_drops_crowded_hashes():
    times = np.arange(50, dtype=np.int32)
    tone = [(np.full(50, 7, np.uint32), times) for _ in range(4)]  # one hash everywhere: a pure tone
    assert len(find_matches(tone, max_bucket=10**6)) == 6
    assert find_matches(tone, max_bucket=150) == []  # 200 landmarks share the hash: dropped


def test_silence_has_an_empty_fingerprint():
    hashes, times = fingerprint_audio(np.zeros((2, RATE * 3), np.float32), RATE)
    assert len(hashes) == len(times) == 0


def _musdb_track(root: Path, subset: str, name: str, seed: int, seconds: float = 8.0) -> np.ndarray:
    stems = {stem: music_like(seconds, RATE, seed=seed * 10 + k, style="sparse" if stem == "vocals" else "mix") * 0.3
             for k, stem in enumerate(("vocals", "drums", "bass", "other"))}
    for stem, audio in stems.items():
        write_audio(root / subset / name / f"{stem}.wav", audio, RATE)
    mixture = sum(stems.values())
    write_audio(root / subset / name / "mixture.wav", mixture, RATE)
    return mixture, stems["drums"] + stems["bass"] + stems["other"]


def _scan(root: Path, layout: str, out: Path, *extra: str):
    result = runner.invoke(app, ["scan", str(root), "--layout", layout, "--out", str(out), "--workers", "0",
                                 "--valid-fraction", "0", *extra])
    assert result.exit_code == 0, result.output
    return out


def test_a_reencoded_test_song_in_train_is_a_leak_that_build_shards_leaves_out(tmp_path):
    musdb, pairs = tmp_path / "musdb", tmp_path / "pairs"
    leaked_mixture, leaked_instrumental = _musdb_track(musdb, "test", "Artist - Held Out", seed=1)
    _musdb_track(musdb, "train", "Artist - Trained", seed=2)
    # The held-out song re-encoded to 16-bit at 48 kHz in the pairs library (train: valid fraction 0).
    write_audio(pairs / "mixtures" / "held out.wav", soxr.resample(leaked_mixture.T, RATE, 48000).T, 48000,
                subtype="PCM_16")
    write_audio(pairs / "instruments" / "held out.wav", soxr.resample(leaked_instrumental.T, RATE, 48000).T, 48000,
                subtype="PCM_16")
    other_mixture, other_instrumental = _musdb_track(tmp_path / "elsewhere", "train", "Other", seed=3)
    write_audio(pairs / "mixtures" / "other.flac", other_mixture, RATE)
    write_audio(pairs / "instruments" / "other.flac", other_instrumental, RATE)
    musdb_manifest = _scan(musdb, "musdb", tmp_path / "musdb.jsonl")
    pairs_manifest = _scan(pairs, "pairs", tmp_path / "pairs.jsonl")
    assert all(entry.fingerprint for item in read_manifest(pairs_manifest).items for entry in item.files.values())

    passing = runner.invoke(app, ["stats", str(musdb_manifest), str(pairs_manifest), "--no-content"])
    assert passing.exit_code == 0, passing.output  # a report without --fail-on-leak
    assert "LEAKS" in passing.output
    failing = runner.invoke(app, ["stats", str(musdb_manifest), str(pairs_manifest), "--no-content", "--fail-on-leak"])
    assert failing.exit_code == 1, failing.output

    exclusions = tmp_path / "exclusions.jsonl"
    check = runner.invoke(app, ["check", str(musdb_manifest), str(pairs_manifest), "--fail-on-leak",
                                "--write-exclusions", str(exclusions)])
    assert check.exit_code == 1, check.output
    listed = read_exclusions(exclusions)
    leaked_id = next(item.id for item in read_manifest(pairs_manifest).items if "held-out" in item.id)
    assert set(listed) == {("pairs", leaked_id)}  # the train copy, never the test song
    assert listed[("pairs", leaked_id)].code == "leak"

    store = tmp_path / "store"
    built = runner.invoke(app, ["build-shards", str(pairs_manifest), "--out", str(store), "--workers", "0",
                                "--no-wds", "--exclude", str(exclusions)])
    assert built.exit_code == 0, built.output
    assert "excluded 1 items (leak: 1)" in built.output
    ids = {track.id for track in open_store(store).tracks}
    assert leaked_id not in ids and len(ids) == 1
    verified = runner.invoke(app, ["verify", str(store)])
    assert verified.exit_code == 0, verified.output  # the store records the manifest it was built from

    rescan = _scan(pairs, "pairs", tmp_path / "pairs.jsonl", "--exclude", str(exclusions))
    assert leaked_id not in {item.id for item in read_manifest(rescan).items}
    rejects = [json.loads(line) for line in (tmp_path / "pairs.rejects.jsonl").read_text().splitlines()]
    assert [r["code"] for r in rejects] == ["leak"]


def test_a_damaged_exclusion_list_is_one_error_naming_the_file(tmp_path):
    good = write_exclusions(tmp_path / "good.jsonl", [Exclusion("lib", "a-1", "leak", "why")])
    assert read_exclusions(good)[("lib", "a-1")].reason == "why"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "vr-exclusions"}\n{"library": "lib", "id": "x", "code": "maybe"}\n')
    with pytest.raises(VRDataError, match="bad.jsonl.*line 2.*maybe"):
        read_exclusions(bad)
    manifest_like = tmp_path / "manifest.jsonl"
    manifest_like.write_text('{"kind": "vr-manifest"}\n')
    with pytest.raises(VRDataError, match="manifest.jsonl.*not an exclusion list"):
        read_exclusions(manifest_like)


def _pairs_library(root: Path) -> dict[str, str]:
    """Pairs with one known fault each (and a good one): name -> the flag it must raise."""
    instrumental = music_like(8.0, RATE, seed=21) * 0.4
    vocal = music_like(8.0, RATE, seed=22, style="sparse") * 0.4
    mixture = instrumental + vocal
    faults = {
        "good": (instrumental, None),
        "quiet instrumental": (instrumental * np.float32(10 ** (-2 / 20)), "gain"),
        "two ms late": (np.concatenate([np.zeros((2, 88), np.float32), instrumental[:, :-88]], axis=1), "offset"),
        "inverted": (-instrumental, "polarity"),
        "wrong song": (music_like(8.0, RATE, seed=23) * 0.4, "low_correlation"),
    }
    for name, (paired, _) in faults.items():
        write_audio(root / "mixtures" / f"{name}.wav", mixture, RATE)
        write_audio(root / "instruments" / f"{name}.wav", paired, RATE)
    return {name: flag for name, (_, flag) in faults.items()}


def test_pair_checks_flag_each_fault_and_strict_rejects_the_flagged(tmp_path):
    expected = _pairs_library(tmp_path / "pairs")
    manifest = read_manifest(_scan(tmp_path / "pairs", "pairs", tmp_path / "pairs.jsonl", "--max-offset-ms", "1000"))
    flags = {item.files["mixture"].path.split("/")[-1][:-4]: item.checks["flags"] for item in manifest.items}
    for name, flag in expected.items():
        if flag is None:
            assert flags[name] == [], name
        else:
            assert flag in flags[name], (name, flags[name])
    assert flags["quiet instrumental"] == ["gain"] and flags["two ms late"] == ["offset"]

    stats = runner.invoke(app, ["stats", str(tmp_path / "pairs.jsonl"), "--no-content", "--json",
                                str(tmp_path / "stats.json")])
    assert stats.exit_code == 0, stats.output
    assert "worst pairs per measure" in stats.output
    worst = json.loads((tmp_path / "stats.json").read_text())["manifests"]["pair_checks"]["worst"]
    ids = {item.files["mixture"].path.split("/")[-1][:-4]: item.id for item in manifest.items}
    assert worst["gain_db"][0]["id"] == ids["inverted"] or worst["gain_db"][0]["id"] == ids["wrong song"]
    assert ids["quiet instrumental"] in [row["id"] for row in worst["gain_db"][:3]]
    assert worst["correlation"][0]["id"] == ids["wrong song"]

    _scan(tmp_path / "pairs", "pairs", tmp_path / "strict.jsonl", "--max-offset-ms", "1000", "--pair-checks", "strict")
    kept = {item.files["mixture"].path.split("/")[-1][:-4] for item in read_manifest(tmp_path / "strict.jsonl").items}
    assert kept == {"good"}
    rejects = [json.loads(line) for line in (tmp_path / "strict.rejects.jsonl").read_text().splitlines()]
    assert {r["code"] for r in rejects} == {"pair_check"} and len(rejects) == 4


def test_outdated_fingerprints_are_warned_about_and_recomputed_by_a_rescan(tmp_path):
    library = tmp_path / "library"
    for index in range(2):
        write_audio(library / f"song{index}.flac", music_like(6.0, RATE, seed=40 + index), RATE)
    manifest_path = _scan(library, "pretrain", tmp_path / "pretrain.jsonl")
    manifest = read_manifest(manifest_path)
    for item in manifest.items:  # as a manifest scanned by the previous fingerprint version would hold them
        item.files = {key: dataclasses.replace(entry, fingerprint="lm1:" + entry.fingerprint.split(":", 1)[1])
                      for key, entry in item.files.items()}
    write_manifest(manifest_path, manifest)
    check = runner.invoke(app, ["check", str(manifest_path)])
    assert check.exit_code == 0, check.output
    assert "2 files have an outdated fingerprint" in " ".join(check.output.split())
    _scan(library, "pretrain", manifest_path)  # incremental: unchanged files, outdated fingerprints
    assert all(is_current(entry.fingerprint) for item in read_manifest(manifest_path).items
               for entry in item.files.values())
