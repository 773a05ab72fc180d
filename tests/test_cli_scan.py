"""The vrdata CLI for scanning: exit codes, files written, one-line errors, dask cluster."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import tone, write_pair
from pipelines.vrdata import app
from vr_data.audio import write_audio
from vr_data.testing.demo import write_demo_corpus
from vr_data.catalog.manifest import read_manifest, read_rejects

runner = CliRunner()


def test_scan_writes_manifest_and_rejects_and_exits_zero(tmp_path):
    write_pair(tmp_path / "lib", "Song_mix.wav", "Song_inst.wav")
    write_audio(tmp_path / "lib" / "mixtures" / "Lonely_mix.wav", tone(2.0), 44100)
    out = tmp_path / "m" / "pairs.jsonl"
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "pairs", "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out).items) == 1
    assert [r.code for r in read_rejects(tmp_path / "m" / "pairs.rejects.jsonl")] == ["unmatched"]
    assert "rejects by reason" in result.output and "unmatched" in result.output
    rescan = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "pairs", "--out", str(out), "--workers", "0"])
    assert rescan.exit_code == 0 and "│      0 │      2 │" in rescan.output  # hashed 0, reused 2


def test_usage_errors_exit_nonzero_with_one_line(tmp_path):
    bad_layout = runner.invoke(app, ["scan", str(tmp_path), "--layout", "nope", "--out", str(tmp_path / "m.jsonl")])
    assert bad_layout.exit_code != 0
    missing = runner.invoke(app, ["scan", str(tmp_path / "absent"), "--layout", "vocals", "--out",
                                  str(tmp_path / "m.jsonl"), "--workers", "0"])
    assert missing.exit_code == 2 and "absent" in missing.output and "Traceback" not in missing.output
    no_dirs = runner.invoke(app, ["scan", str(tmp_path), "--layout", "pairs", "--out", str(tmp_path / "m.jsonl"),
                                  "--workers", "0"])
    assert no_dirs.exit_code == 2 and "mixtures/" in no_dirs.output


def test_verify_manifest_exit_codes(tmp_path):
    write_audio(tmp_path / "lib" / "a.wav", tone(2.0), 44100)
    out = tmp_path / "v.jsonl"
    assert runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out", str(out),
                               "--workers", "0"]).exit_code == 0
    assert runner.invoke(app, ["verify-manifest", str(out)]).exit_code == 0
    moved = tmp_path / "moved"
    (tmp_path / "lib").rename(moved)
    assert runner.invoke(app, ["verify-manifest", str(out), "--root", str(moved)]).exit_code == 0
    write_audio(moved / "a.wav", tone(2.0, seed=5), 44100)
    damaged = runner.invoke(app, ["verify-manifest", str(out), "--root", str(moved)])
    assert damaged.exit_code == 1 and "hash_mismatch" in damaged.output and "a.wav" in damaged.output


def test_demo_corpus_is_deterministic(tmp_path):
    first = write_demo_corpus(tmp_path / "one", seconds=3.0)
    second = write_demo_corpus(tmp_path / "two", seconds=3.0)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".wav", ".flac", ".ogg", ".mp3"}  # every format, Ogg serials included
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


@pytest.mark.slow
def test_demo_corpus_scans_with_a_local_dask_cluster(tmp_path):
    write_demo_corpus(tmp_path / "demo", seconds=4.0)
    counts = {}
    for layout in ("pairs", "vocals", "instrumentals", "pretrain"):
        out = tmp_path / f"{layout}.jsonl"
        result = runner.invoke(app, ["scan", str(tmp_path / "demo" / layout), "--layout", layout, "--out", str(out),
                                     "--workers", "2", "--group-by", "artist"])
        assert result.exit_code == 0, result.output
        counts[layout] = (len(read_manifest(out).items), [r.code for r in read_rejects(out.with_name(f"{layout}.rejects.jsonl"))])
    assert counts == {"pairs": (6, ["unmatched"]), "vocals": (6, []), "instrumentals": (6, ["unreadable"]),
                      "pretrain": (4, [])}
    header = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert header["kind"] == "vr-manifest" and header["role"] == "pair"
