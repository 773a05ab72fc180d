"""vrdata's promise (issue 11, point 14): a user error is one line on stderr and exit code 2,
damage found is 1, Ctrl-C is one line and 130, a bug is a traceback and 70; never a traceback
for what a user can cause, and never the same code for damage and a crash."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import tone
from pipelines.common import EXIT_BUG, EXIT_INTERRUPTED, run_app
from pipelines.vrdata import app
from vr_data.audio import write_audio

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _one_line_error(result, *fragments: str) -> str:
    """The stderr line of a user error; asserts exit 2, one line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def lib(tmp_path) -> Path:
    """A scanned library of two vocals: `tmp_path/lib`, manifest `tmp_path/m/vocals.jsonl`."""
    for index in range(2):
        write_audio(tmp_path / "lib" / f"take {index}.wav", tone(1.5, seed=index), 44100)
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out",
                                 str(tmp_path / "m" / "vocals.jsonl"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return tmp_path / "m" / "vocals.jsonl"


def _edited_manifest(manifest: Path, target: Path, edit) -> Path:
    header, *items = (json.loads(line) for line in manifest.read_text().splitlines())
    edit(header, items[0])
    target.write_text("".join(json.dumps(record) + "\n" for record in (header, *items)))
    return target


@pytest.mark.parametrize("command", ["build-shards", "stats", "verify-manifest"])
def test_an_audio_file_given_as_a_manifest(tmp_path, command):
    write_audio(tmp_path / "song.wav", tone(1.0), 44100)
    extra = ["--out", str(tmp_path / "store")] if command == "build-shards" else []
    result = runner.invoke(app, [command, str(tmp_path / "song.wav"), *extra, "--workers", "0"])
    _one_line_error(result, "song.wav", "not UTF-8")


@pytest.mark.parametrize("edit, fragment", [
    (lambda header, item: header.update(schema="one"), "schema must be an integer"),
    (lambda header, item: header.pop("role"), "no 'role'"),
    (lambda header, item: header.pop("root"), "no 'root'"),
    (lambda header, item: item["files"]["audio"].update(path=12), "'path' must be a non-empty string"),
    (lambda header, item: item["files"]["audio"].update(sample_rate=0), "'sample_rate' must be an integer >= 1"),
    (lambda header, item: item["files"]["audio"].update(samples="many"), "'samples' must be an integer"),
    (lambda header, item: item["sources"].update(vocal=["drums"]), "unknown file keys ['drums']"),
])
def test_damaged_manifests_are_one_line_errors_in_build_shards(lib, tmp_path, edit, fragment):
    bad = _edited_manifest(lib, tmp_path / "bad.jsonl", edit)
    result = runner.invoke(app, ["build-shards", str(bad), "--out", str(tmp_path / "store"), "--workers", "0"])
    _one_line_error(result, "bad.jsonl", fragment)
    assert not (tmp_path / "store").exists()


def test_a_non_utf8_manifest_body(lib, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(lib.read_bytes().splitlines()[0] + b"\n\xff\xfe\n")
    _one_line_error(runner.invoke(app, ["stats", str(bad), "--no-content"]), "bad.jsonl", "not UTF-8")


@pytest.mark.parametrize("options, fragment", [
    (["--group-by", "foo"], "--group-by 'foo'"),
    (["--group-by", "regex:(["], "not a valid regular expression"),
    (["--valid-fraction", "1"], "--valid-fraction must be in [0, 1)"),
    (["--valid-fraction", "-0.1"], "--valid-fraction must be in [0, 1)"),
])
def test_scan_settings_refused_before_reading(tmp_path, options, fragment):
    write_audio(tmp_path / "lib" / "a.wav", tone(1.5), 44100)
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out",
                                 str(tmp_path / "m.jsonl"), "--workers", "0", *options])
    _one_line_error(result, fragment)
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("pattern, fragment", [(r"^(\d+)_", "(?P<key>...)"), ("(?P<key>[", "not a valid regular")])
def test_pair_patterns_are_checked(tmp_path, pattern, fragment):
    (tmp_path / "lib" / "mixtures").mkdir(parents=True)
    (tmp_path / "lib" / "instruments").mkdir()
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "pairs", "--out", str(tmp_path / "m.jsonl"),
                                 "--workers", "0", "--pair-pattern", pattern])
    _one_line_error(result, fragment)


@pytest.mark.parametrize("command", ["scan", "build-shards", "stats", "verify", "verify-manifest"])
def test_negative_workers_are_a_usage_error(tmp_path, command):
    arguments = {"scan": [str(tmp_path), "--layout", "vocals", "--out", str(tmp_path / "m.jsonl")],
                 "build-shards": [str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "s")]}.get(command, [str(tmp_path)])
    result = runner.invoke(app, [command, *arguments, "--workers", "-1"])
    assert result.exit_code == 2 and "--workers" in result.output and "Traceback" not in result.output


def test_outputs_that_cannot_be_written(lib, tmp_path):
    (tmp_path / "file.txt").write_text("mine")
    library = str(tmp_path / "lib")
    scan = ["scan", library, "--layout", "vocals", "--workers", "0"]
    _one_line_error(runner.invoke(app, [*scan, "--out", str(tmp_path)]), "is a directory")
    _one_line_error(runner.invoke(app, [*scan, "--out", str(tmp_path / "file.txt" / "m.jsonl")]), "not a directory")
    _one_line_error(runner.invoke(app, [*scan, "--out", str(tmp_path / "m2.jsonl"), "--json", str(tmp_path)]),
                    "is a directory, not a regular file")
    _one_line_error(runner.invoke(app, ["build-shards", str(lib), "--out", str(tmp_path / "file.txt"), "--workers", "0"]),
                    "file.txt", "not a directory")
    _one_line_error(runner.invoke(app, ["stats", str(lib), "--no-content", "--plots", str(tmp_path / "file.txt")]),
                    "--plots exists and is not a directory")
    _one_line_error(runner.invoke(app, ["stats", str(lib), "--no-content", "--json", str(tmp_path / "file.txt" / "x")]),
                    "not a directory")
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_a_full_disk_is_one_line(lib, tmp_path, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vr_data.io.os.fsync", full)
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out",
                                 str(tmp_path / "new.jsonl"), "--workers", "0"])
    _one_line_error(result, "new.jsonl", "cannot write (no space left on device)")
    assert not list(tmp_path.glob(".new.jsonl.tmp-*"))


def test_build_shards_on_a_full_disk_is_one_line(lib, tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vr_data.store.wds.TrackTarWriter._write", full)
    result = runner.invoke(app, ["build-shards", str(lib), "--out", str(tmp_path / "store"), "--workers", "0"])
    _one_line_error(result, "cannot write the store (no space left on device)")


@pytest.mark.parametrize("arguments, fragment", [
    (["preview-mix", "S", "--out", "O", "--pair", "0", "--augmented", "0"], "at least one above 0"),
    (["preview-mix", "S", "--out", "O", "--split", "dev"], "--split must be one of train, valid, test"),
    (["demo-corpus", "D", "--seconds", "0"], "--seconds must be > 0"),
])
def test_other_bad_options_are_one_line(tmp_path, arguments, fragment):
    arguments = [str(tmp_path / a) if a in ("S", "O", "D") else a for a in arguments]
    _one_line_error(runner.invoke(app, arguments), fragment)


def test_demo_corpus_pointed_at_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(runner.invoke(app, ["demo-corpus", str(tmp_path / "file")]), "not a directory")


def test_scan_refuses_another_librarys_manifest_unless_forced(lib, tmp_path):
    write_audio(tmp_path / "other" / "x.wav", tone(1.5), 44100)
    command = ["scan", str(tmp_path / "other"), "--layout", "vocals", "--out", str(lib), "--workers", "0"]
    _one_line_error(runner.invoke(app, command), "library 'lib'", "--force")
    assert runner.invoke(app, [*command, "--force"]).exit_code == 0


def test_a_build_that_built_nothing_is_an_error(tmp_path):
    write_audio(tmp_path / "lib" / "a.wav", tone(1.5), 44100)
    assert runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out", str(tmp_path / "m.jsonl"),
                               "--workers", "0"]).exit_code == 0
    result = runner.invoke(app, ["build-shards", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "store"),
                                 "--workers", "0", "--min-seconds", "5"])
    _one_line_error(result, "no track was built: all 1 were rejected")
    assert "too_short" in result.stdout  # the summary with the rejects came first


def test_a_wrong_root_in_build_shards(lib, tmp_path):
    result = runner.invoke(app, ["build-shards", f"{lib}=/wrong/root", "--out", str(tmp_path / "store"), "--workers", "0"])
    _one_line_error(result, "vocals.jsonl", "/wrong/root does not exist here")


def test_ctrl_c_is_one_line_and_exit_130(lib, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipelines.scan_cmd.scan", interrupted)
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out", str(lib), "--workers", "0"])
    assert result.exit_code == EXIT_INTERRUPTED == 130
    assert result.stderr.strip() == "interrupted: rerun the same command to resume"


def test_a_bug_is_a_traceback_and_exit_70_never_1(capsys):
    buggy = typer.Typer()

    @buggy.command()
    def crash() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(SystemExit) as raised:
        run_app(buggy, [])  # a single command runs without its name
    assert raised.value.code == EXIT_BUG == 70
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "RuntimeError: a bug" in captured.err and "exit code 70" in captured.err


def test_damage_found_is_exit_1(lib, tmp_path):
    write_audio(tmp_path / "lib" / "take 0.wav", tone(1.5, seed=7), 44100)
    result = runner.invoke(app, ["verify-manifest", str(lib)])
    assert result.exit_code == 1 and "hash_mismatch" in result.stdout


@pytest.mark.slow
def test_an_unreachable_scheduler_fails_fast_naming_it(tmp_path):
    write_audio(tmp_path / "lib" / "a.wav", tone(1.5), 44100)
    started = time.monotonic()
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out", str(tmp_path / "m.jsonl"),
                                 "--scheduler", "tcp://127.0.0.1:9"])
    assert time.monotonic() - started < 20
    _one_line_error(result, "tcp://127.0.0.1:9", "cannot reach the dask scheduler within 5 s")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_a_dask_scan_is_one_line(tmp_path):
    for index in range(60):
        write_audio(tmp_path / "lib" / f"take {index}.flac", tone(6.0, seed=index), 44100)
    command = [sys.executable, "-m", "pipelines.vrdata", "scan", str(tmp_path / "lib"), "--layout", "vocals",
               "--out", str(tmp_path / "m.jsonl"), "--workers", "2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "VR_PROGRESS_INTERVAL": "0"})
    first = process.stdout.readline()  # the first progress line: the cluster is up and tasks run
    assert first.startswith("scan lib: "), first
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["interrupted: rerun the same command to resume"], stderr
    journal = tmp_path / ".m.jsonl.journal"
    assert journal.exists() and len(journal.read_text().splitlines()) >= 2  # finished work kept for the rerun


def test_an_interrupted_scan_command_resumes_and_cleans_up(tmp_path, monkeypatch):
    for index in range(3):
        write_audio(tmp_path / "lib" / f"take {index}.wav", tone(1.2, seed=index), 44100)
    from vr_data.catalog import scan as scan_module

    def stop_after_one(*args, on_item=None, **kwargs):
        def on_item_then_stop(item, rejects):
            on_item(item, rejects)
            raise KeyboardInterrupt

        return scan_module.scan(*args, on_item=on_item_then_stop, **kwargs)

    command = ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out", str(tmp_path / "m.jsonl"), "--workers", "0"]
    monkeypatch.setattr("pipelines.scan_cmd.scan", stop_after_one)
    assert runner.invoke(app, command).exit_code == 130
    assert (tmp_path / ".m.jsonl.journal").exists() and not (tmp_path / "m.jsonl").exists()
    monkeypatch.undo()
    resumed = runner.invoke(app, command)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed an interrupted scan: 1 candidates were already done" in resumed.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "m.jsonl", "m.rejects.jsonl"]  # no journal, no lock


def test_a_second_scan_of_the_same_out_is_refused(tmp_path):
    from vr_data.io import exclusive_lock

    write_audio(tmp_path / "lib" / "a.wav", tone(1.2), 44100)
    with exclusive_lock(tmp_path / ".m.jsonl.lock", "vrdata scan", subject=tmp_path / "m.jsonl"):
        result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--layout", "vocals", "--out",
                                     str(tmp_path / "m.jsonl"), "--workers", "0"])
    _one_line_error(result, "m.jsonl: in use by PID", "(vrdata scan)")
