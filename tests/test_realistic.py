"""The realistic check corpus (vr_data.testing.realistic): scores, splitting, mixing and caching
without any package; one tiny build where festival, espeak-ng and the soundtracks are installed."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from vr_data.testing import realistic
from vr_data.testing.realistic import (
    EXCLUDED_PACKAGES, PACKAGES, Note, Rest, chant_ssml, corpus_record, excerpt_starts, is_built, mix_pair,
    note_name, random_score, rms, score_xml, split_recordings, transpose,
)


def test_note_names_are_festivals_flats_with_octaves():
    assert [note_name(m) for m in (58, 60, 61, 69)] == ["Bb3", "C4", "Db4", "A4"]


def test_random_scores_differ_by_seed_stay_in_range_and_fill_the_beats():
    first, again, other = (random_score(np.random.default_rng(seed), beats=24) for seed in (1, 1, 2))
    assert first == again and first != other
    assert first.beats() >= 24 and 70 <= first.bpm <= 150
    notes = [event for event in first.events if isinstance(event, Note)]
    rests = [event for event in first.events if isinstance(event, Rest)]
    assert notes and rests and all(note.word in realistic.WORDS for note in notes)
    midi = [_midi(note.note) for note in notes]
    assert 45 <= min(midi) and max(midi) <= 64


def test_transpose_moves_every_note_and_keeps_words_and_rests():
    score = random_score(np.random.default_rng(3), beats=12)
    up = transpose(score, 5)
    for before, after in zip(score.events, up.events):
        if isinstance(before, Rest):
            assert after == before
        else:
            assert _midi(after.note) == _midi(before.note) + 5 and after.word == before.word


def test_score_xml_is_festivals_singing_markup():
    score = transpose(random_score(np.random.default_rng(4), beats=8), -2)
    root = ElementTree.fromstring(score_xml(score).split("\n", 2)[2])   # after the XML and DOCTYPE lines
    assert root.tag == "SINGING" and root.get("BPM") == str(score.bpm)
    durations = [child for child in root if child.tag == "DURATION"]
    assert len(durations) == sum(isinstance(event, Note) for event in score.events)
    first = next(event for event in score.events if isinstance(event, Note))
    assert durations[0].find("PITCH").get("NOTE") == first.note and durations[0].find("PITCH").text == first.word


def test_chant_ssml_gives_each_word_its_pitch():
    assert chant_ssml(["sun", "rain"], [15, -30]) == \
        '<speak><prosody pitch="+15%">sun</prosody> <prosody pitch="-30%">rain</prosody></speak>'


def test_split_holds_out_whole_recordings_from_every_package():
    recordings = {"a-music": [Path(f"/a/{i}.ogg") for i in range(10)], "b-music": [Path(f"/b/{i}.ogg") for i in range(3)],
                  "c-music": [Path("/c/only.ogg")]}
    train, held_out = split_recordings(recordings, 0.3, seed=24)
    assert not set(train) & set(held_out) and len(train) + len(held_out) == 14
    assert sum(p.parent.name == "a" for p in held_out) == 3 and sum(p.parent.name == "b" for p in held_out) == 1
    assert Path("/c/only.ogg") in train          # a package of one recording cannot give one away
    assert split_recordings(recordings, 0.3, seed=24) == (train, held_out)
    assert split_recordings(recordings, 0.3, seed=25) != (train, held_out)


def test_reserved_packages_are_refused_and_never_installed():
    for package in EXCLUDED_PACKAGES:
        with pytest.raises(ValueError, match="reserved"):
            realistic.package_recordings(package)
        assert package not in PACKAGES
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    installed = re.search(r"^REALISTIC_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert sorted(installed) == sorted(PACKAGES)


def test_mix_pair_sets_the_vocal_level_and_sums_exactly_without_clipping():
    rng = np.random.default_rng(0)
    instrumental = (0.3 * rng.standard_normal((2, 5000))).astype(np.float32)
    vocal = (0.1 * rng.standard_normal((2, 3000))).astype(np.float32)
    mixture, instrumental_out, vocal_out = mix_pair(instrumental, vocal, -6.0, peak=0.5)
    assert mixture.shape == instrumental_out.shape == vocal_out.shape == (2, 5000)
    assert np.array_equal(mixture, instrumental_out + vocal_out)
    assert np.max(np.abs(mixture)) <= 0.5 + 1e-6                   # scaled down as a whole...
    level = 20 * np.log10(rms(vocal_out) / rms(instrumental_out))
    assert level == pytest.approx(-6.0, abs=0.01)                 # ... so the level holds
    assert np.all(vocal_out[:, 3000:] == 0)                       # a short vocal is padded


def test_excerpts_avoid_intros_and_fit_the_recording():
    starts = excerpt_starts(100.0, 20.0, 5, np.random.default_rng(1))
    assert all(5.0 <= start <= 75.0 for start in starts) and starts == sorted(starts)
    assert excerpt_starts(10.0, 20.0, 2, np.random.default_rng(1)) == [0.0, 0.0]


def test_a_corpus_is_reused_only_when_its_record_matches(tmp_path):
    record = corpus_record(realistic.TINY, {"festival": "1"})
    assert not is_built(tmp_path, record)
    (tmp_path / "corpus.json").write_text(json.dumps({**record, "eval_recordings": ["/x.ogg"]}))
    assert is_built(tmp_path, record)
    assert not is_built(tmp_path, corpus_record(realistic.TINY, {"festival": "2"}))
    (tmp_path / "corpus.json").write_text("[1, 2")
    assert not is_built(tmp_path, record)


def test_missing_packages_are_named_with_how_to_install(monkeypatch):
    monkeypatch.setattr(realistic, "package_version", lambda package: None if package == "espeak-ng" else "1")
    monkeypatch.setattr(realistic.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(realistic.CorpusUnavailable, match=r"espeak-ng .*make realistic-deps"):
        realistic.require_packages()


@pytest.mark.skipif(bool(realistic.missing_requirements()),
                    reason=f"needs {', '.join(realistic.missing_requirements()) or 'nothing'} "
                           "(`make realistic-deps` installs them)")
def test_a_tiny_corpus_builds_from_the_packages_then_is_reused(tmp_path):
    import soundfile as sf

    layout = realistic.build_realistic_corpus(tmp_path / "corpus", realistic.TINY)
    record = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    assert not set(record["train_recordings"]) & set(record["eval_recordings"])
    assert not any(package in path for package in ("drascula", "hyperrogue", "asc-music")
                   for path in record["train_recordings"] + record["eval_recordings"])
    vocals = sorted(layout["vocals"].glob("*.flac"))
    assert [p.name.split("_")[-1] for p in vocals] == ["sung.flac", "sung.flac", "spoken.flac"]
    for path in vocals:
        audio, rate = sf.read(path)
        assert rate == 44100 and audio.shape == (6 * 44100, 2) and rms(audio) > 0.01
    for mix in sorted((layout["pairs"] / "mixtures").glob("*_mix.flac")):
        inst = layout["pairs"] / "instruments" / mix.name.replace("_mix", "_inst")
        mixture, instrumental = sf.read(mix)[0], sf.read(inst)[0]
        vocal_level = 20 * np.log10(rms(mixture - instrumental) / rms(instrumental))
        assert -10.5 <= vocal_level <= 0.5    # FLAC's 16-bit rounding moves it a little
    stamp = (tmp_path / "corpus" / "corpus.json").stat().st_mtime_ns
    realistic.build_realistic_corpus(tmp_path / "corpus", realistic.TINY)
    assert (tmp_path / "corpus" / "corpus.json").stat().st_mtime_ns == stamp


def _midi(name: str) -> int:
    pitch = name.rstrip("-0123456789")
    return (int(name[len(pitch):]) + 1) * 12 + realistic.NOTE_NAMES.index(pitch)
