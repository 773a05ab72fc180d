"""What vrdata prints and writes (issue 11, points 2, 12, 15-17): versions, JSON results (also
on standard output), dry runs, `manifests/*.jsonl`, `M.jsonl=ROOT`, atomic writes that never
replace a device, plain progress lines in logs, and tables that fit 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tone
from pipelines.common import PlainProgress, console
from pipelines.vrdata import app
from test_build_support import GEOMETRY, STFT
from vr_data.audio import write_audio
from vr_data.errors import VRDataError
from vr_data.io import atomic_write_bytes

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
SMALL = ["--n-fft", str(STFT.n_fft), "--hop-length", str(STFT.hop_length), "--chunk-frames", str(GEOMETRY.chunk_frames),
         "--shard-frames", str(GEOMETRY.shard_frames), "--segment-frames", str(GEOMETRY.segment_frames)]


def _scan(root: Path, out: Path, layout: str = "vocals", *extra: str):
    result = runner.invoke(app, ["scan", str(root), "--layout", layout, "--out", str(out), "--workers", "0", *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def manifests(tmp_path) -> Path:
    """`tmp_path/manifests/` with vocals.jsonl (2 takes) and its (empty) rejects file, as scan writes them."""
    for index in range(2):
        write_audio(tmp_path / "vocals" / f"take {index}.wav", tone(1.5, seed=index), 44100)
    _scan(tmp_path / "vocals", tmp_path / "manifests" / "vocals.jsonl")
    assert (tmp_path / "manifests" / "vocals.rejects.jsonl").exists()
    return tmp_path / "manifests"


def test_version_of_both_clis():
    from pipelines.vrtrain import app as vrtrain_app
    from vr_data import __version__

    assert runner.invoke(app, ["--version"]).stdout == f"vrdata {__version__}\n"
    assert runner.invoke(vrtrain_app, ["--version"]).stdout == f"vrtrain {__version__}\n"


def test_scan_json_on_stdout_keeps_the_tables_on_stderr(tmp_path):
    for index in range(2):
        write_audio(tmp_path / "lib" / f"take {index}.wav", tone(1.5, seed=index), 44100)
    (tmp_path / "lib" / "broken.wav").write_bytes(b"RIFF")
    result = _scan(tmp_path / "lib", tmp_path / "m.jsonl", "vocals", "--json", "-")
    summary = json.loads(result.stdout)  # stdout is the JSON document alone
    assert summary["items"] == 2 and summary["rejects"] == {"unreadable": 1} and summary["hashed"] == 2
    assert summary["manifest"] == str(tmp_path / "m.jsonl") and set(summary["splits"]) <= {"train", "valid"}
    assert "rejects by reason" in result.stderr


def test_scan_summary_has_every_split_and_the_warnings(tmp_path):
    for index in range(6):  # these six ids all hash to train at 0.1
        write_audio(tmp_path / "lib" / f"S0 {index}.wav", tone(1.2, seed=index), 44100)
    result = _scan(tmp_path / "lib", tmp_path / "m.jsonl")
    assert "test h" in result.stdout and "valid h" in result.stdout
    assert "warning: the valid split is empty: none of 6 items fell in the 0.1 fraction" in result.stdout


def test_build_verify_json_and_dry_run(manifests, tmp_path):
    store = tmp_path / "store"
    dry = runner.invoke(app, ["build-shards", str(manifests / "vocals.jsonl"), "--out", str(store), "--workers", "0",
                              "--dry-run", *SMALL])
    assert dry.exit_code == 0, dry.output
    assert "to build" in dry.stdout and "estimated size: Zarr " in dry.stdout and "nothing written (--dry-run)" in dry.stdout
    assert not store.exists()
    dry_json = runner.invoke(app, ["build-shards", str(manifests / "vocals.jsonl"), "--out", str(store), "--workers", "0",
                                   "--dry-run", "--json", "-", *SMALL])
    estimate = json.loads(dry_json.stdout)
    assert estimate["dry_run"] and estimate["to_build"]["tracks"] == 2 and estimate["estimate"]["zarr_bytes"] > 0
    built = runner.invoke(app, ["build-shards", str(manifests / "vocals.jsonl"), "--out", str(store), "--workers", "0",
                                "--json", str(tmp_path / "build.json"), *SMALL])
    assert built.exit_code == 0, built.output
    record = json.loads((tmp_path / "build.json").read_text())
    assert record["tracks"] == {"built": 2, "skipped": 0, "rejected": 0} and record["zarr_bytes"] > 0
    verified = runner.invoke(app, ["verify", str(store), "--json", "-"])
    report = json.loads(verified.stdout)
    assert verified.exit_code == 0 and report["ok"] and report["tracks"] == 2 and report["damages"] == []
    tar = next((store / "wds").rglob("*.tar"))
    tar.write_bytes(tar.read_bytes()[:-1] + b"x")
    damaged = runner.invoke(app, ["verify", str(store), "--json", "-"])
    assert damaged.exit_code == 1 and json.loads(damaged.stdout)["damages"][0]["kind"] == "wds_shard"


def test_the_readme_glob_skips_rejects_files(manifests, tmp_path):
    paths = sorted(str(p) for p in manifests.glob("*.jsonl"))  # vocals.jsonl and vocals.rejects.jsonl
    assert len(paths) == 2
    result = runner.invoke(app, ["build-shards", *paths, "--out", str(tmp_path / "store"), "--workers", "0", *SMALL])
    assert result.exit_code == 0, result.output


def test_every_command_taking_manifests_accepts_m_equals_root(manifests, tmp_path):
    moved = tmp_path / "moved"
    (tmp_path / "vocals").rename(moved)
    spec = f"{manifests / 'vocals.jsonl'}={moved}"
    assert runner.invoke(app, ["verify-manifest", spec]).exit_code == 0
    stats = runner.invoke(app, ["stats", spec, "--workers", "0", "--json", "-"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["manifests"]["content"]["errors"] == []  # decoded from the new root
    built = runner.invoke(app, ["build-shards", spec, "--out", str(tmp_path / "store"), "--workers", "0", *SMALL])
    assert built.exit_code == 0, built.output


def test_json_never_replaces_a_device_or_a_symlink_to_one(manifests, tmp_path):
    link = tmp_path / "null-link"
    os.symlink("/dev/null", link)
    for target, words in (("/dev/stdout", "names a device or a descriptor"), ("/dev/null", "names a device"),
                          (str(link), "character device, not a regular file")):
        result = runner.invoke(app, ["stats", str(manifests / "vocals.jsonl"), "--no-content", "--json", target])
        assert result.exit_code == 2 and words in result.stderr, result.stderr
        assert "use '-' for standard output" in result.stderr
    assert link.is_symlink() and Path("/dev/null").is_char_device() and Path("/dev/stdout").is_symlink()


def test_atomic_writes_refuse_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "folder", tmp_path / "folder-link")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken-link")
    for name, words in (("fifo", "named pipe"), ("folder", "directory"), ("folder-link", "directory"),
                        ("broken-link", "broken symbolic link")):
        with pytest.raises(VRDataError, match=words):
            atomic_write_bytes(tmp_path / name, b"x")
    assert (tmp_path / "folder-link").is_symlink() and (tmp_path / "fifo").is_fifo()
    (tmp_path / "real.json").write_text("old")
    os.symlink(tmp_path / "real.json", tmp_path / "real-link")
    atomic_write_bytes(tmp_path / "real-link", b"new")  # a symlink to a regular file: its file is replaced
    assert (tmp_path / "real-link").is_symlink() and (tmp_path / "real.json").read_text() == "new"


def test_plain_progress_lines_at_intervals(monkeypatch):
    lines = []
    monkeypatch.setattr(console, "print", lambda text, **kwargs: lines.append(text))
    with PlainProgress("items", interval=3600) as bar:
        task = bar.add_task("scan lib", total=4, rate="")
        for _ in range(4):
            bar.update(task, advance=1, rate="0.01 h")
    assert len(lines) == 2  # the first step, then the end: nothing in between within the interval
    assert lines[0].startswith("scan lib: 1/4 items (25%), 0.01 h, 0:00:00 elapsed, about 0:00:00 left")
    assert lines[1].startswith("scan lib: 4/4 items (100%), 0.01 h, 0:00:00 elapsed")
    lines.clear()
    with PlainProgress("audio-h", interval=0) as bar:
        task = bar.add_task("build store", total=0.5, rate="")
        bar.update(task, advance=0.25, rate="30x realtime")
        bar.update(task, advance=0.25, rate="31x realtime")
    assert len(lines) == 2 and lines[1].startswith("build store: 0.50/0.50 audio-h (100%), 31x realtime")


def test_scan_prints_progress_lines_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("VR_PROGRESS_INTERVAL", "0")
    for index in range(3):
        write_audio(tmp_path / "lib" / f"take {index}.wav", tone(1.2, seed=index), 44100)
    result = _scan(tmp_path / "lib", tmp_path / "m.jsonl")
    progress = [line for line in result.stdout.splitlines() if line.startswith("scan lib: ")]
    assert [line.split(" items")[0] for line in progress] == ["scan lib: 1/3", "scan lib: 2/3", "scan lib: 3/3"]


def _run_at_80_columns(module: str, *arguments: str) -> str:
    result = subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "80", "VR_PROGRESS": "0"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _assert_fits_80_columns(text: str) -> None:
    """Nothing cut to "...", no line over 80 columns, and every table row closed by its right
    border (a table wider than the terminal is cropped, its last columns lost)."""
    assert "…" not in text, text
    lines = text.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80, text
    for line in lines:
        if line[:1] in "┏┃┡│└":
            assert line.rstrip()[-1] in "┓┃┩│┘", line


@pytest.mark.slow
def test_stats_tables_fit_80_columns_uncut(tmp_path):
    for index, name in enumerate(["A very long artist name - An even longer song title (Extended Mix)", "b", "c"]):
        write_audio(tmp_path / "instrumentals-of-a-long-library-name" / f"{name}.ogg", tone(1.5, seed=index), 22050)
    write_audio(tmp_path / "instrumentals-of-a-long-library-name" / "quiet.mp3", tone(1.5, seed=5) * 1e-4, 44100)
    (tmp_path / "instrumentals-of-a-long-library-name" / "broken.flac").write_bytes(b"fLaC")
    out = tmp_path / "manifests" / "inst.jsonl"
    _scan(tmp_path / "instrumentals-of-a-long-library-name", out, "instrumentals")
    from vr_data.catalog.manifest import read_manifest
    from vr_data.store.build import build_store

    build_store([read_manifest(out)], tmp_path / "store", stft=STFT, geometry=GEOMETRY)
    text = _run_at_80_columns("pipelines.vrdata", "stats", str(out), str(tmp_path / "store"), "--workers", "0")
    for words in ("integrated loudness", "clipped", "levels from the spectrograms", "silent", "unreadable 1",
                  "instrumentals-of-a-long-library-name", "test"):
        assert words in text, words
    _assert_fits_80_columns(text)


@pytest.mark.slow
def test_vrtrain_presets_fit_80_columns_uncut():
    text = _run_at_80_columns("pipelines.vrtrain", "presets")
    assert "frame-primer" in text and "tiny" in text and "108,229,338" in text
    _assert_fits_80_columns(text)


def _musdb(root: Path) -> None:
    for subset, name, seed in (("train", "A - One", 0), ("test", "B - Two", 10), ("test", "C - Three", 20)):
        stems = {stem: tone(2.0, seed=seed + i) * 0.25 for i, stem in enumerate(("vocals", "drums", "bass", "other"))}
        if name == "C - Three":
            stems["drums"] = stems["bass"] = np.zeros_like(stems["other"])  # a song without drums or bass
        stems["mixture"] = sum(stems.values())
        for stem, audio in stems.items():
            write_audio(root / subset / name / f"{stem}.wav", audio, 44100)


def test_musdb_test_songs_reach_the_mixer_as_the_test_split(tmp_path):
    _musdb(tmp_path / "musdb")
    manifest = tmp_path / "musdb.jsonl"
    _scan(tmp_path / "musdb", manifest, "musdb")
    built = runner.invoke(app, ["build-shards", str(manifest), "--out", str(tmp_path / "store"), "--workers", "0", *SMALL])
    assert built.exit_code == 0, built.output
    from vr_data.mixer import MixerConfig, ZarrMixerDataset

    config = MixerConfig(crop_frames=32, batch_size=2, split="test", proportions={"pair": 1.0, "augmented": 0.0,
                                                                                     "pretrain": 0.0})
    dataset = ZarrMixerDataset(tmp_path / "store", config)
    assert {track.split for track in dataset.store.tracks_by_role("pair", split="test")} == {"test"}
    assert len(dataset.store.tracks_by_role("pair", split="test")) == 2
    preview = runner.invoke(app, ["preview-mix", str(tmp_path / "store"), "--split", "test", "--n", "2",
                                  "--crop-frames", "32", "--pair", "1", "--augmented", "0", "--out", str(tmp_path / "p")])
    assert preview.exit_code == 0, preview.output
    assert len(list((tmp_path / "p").glob("*.wav"))) >= 2
