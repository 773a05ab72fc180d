"""Checkpoints that cannot lie, and a run directory one run at a time (issue 20, section 1):
digests checked on every load (resume, --init, separate, eval, export), damaged or missing files
refused in one line naming the file and the newest intact checkpoint, state files of the wrong
shape refused, the run directory locked, metrics never duplicated, a full disk reported with
the space needed, run files that follow the umask, a finished run extended with --set."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
from safetensors import SafetensorError
from typer.testing import CliRunner

from test_train import TINY, config, store, step_losses  # noqa: F401  (store: the module's fixture)
from vr_data.errors import VRDataError
from vr_data.io import exclusive_lock
from vr_model.network.checkpoint import file_digest, load_model
from vr_model.train import train
from vr_model.train.runlog import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    return lines[0]


def cli(*args: str):
    from pipelines.vrtrain import app

    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def finished_run(store, tmp_path_factory) -> Path:  # noqa: F811
    """A 4-step run with checkpoints at steps 2 and 4 (kept: both)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train(store, run, config("checkpoint.every=2", stages=((32, 4, 1, 4),)))
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_digest(checkpoint: Path, name: str) -> None:
    """What a writer that recorded a wrong file honestly would leave: the digest matches."""
    document = json.loads((checkpoint / "config.json").read_text())
    document["files"][name] = file_digest(checkpoint / name)
    (checkpoint / "config.json").write_text(json.dumps(document))


def newest(run: Path) -> Path:
    return run / "checkpoints" / "step-00000004"


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "trainer.pt", "state.json"])
def test_a_flipped_byte_is_refused_on_resume_naming_the_file_and_the_intact_older_checkpoint(run_copy, name):
    flip_middle_byte(newest(run_copy) / name)
    line = one_error_line(cli("run", "--resume", str(run_copy)))
    assert f"step-00000004/{name}" in line and "damaged checkpoint" in line
    assert "step-00000002" in line and f"vrtrain run --resume {run_copy}" in line


def test_a_flipped_byte_is_refused_by_separate_eval_export_and_init(run_copy, store, tmp_path):  # noqa: F811
    flip_middle_byte(newest(run_copy) / "ema.safetensors")
    flip_middle_byte(newest(run_copy) / "model.safetensors")
    with pytest.raises(VRDataError, match="ema.safetensors: damaged checkpoint"):
        load_model(newest(run_copy))
    line = one_error_line(cli("export", "--checkpoint", str(newest(run_copy)), "--onnx", str(tmp_path / "m.onnx")))
    assert "ema.safetensors: damaged checkpoint" in line and not (tmp_path / "m.onnx").exists()
    song = tmp_path / "song.wav"
    song.write_bytes(b"")
    line = one_error_line(cli("separate", str(song), "--checkpoint", str(newest(run_copy)), "--out",
                              str(tmp_path / "out")))
    assert "damaged checkpoint" in line
    with pytest.raises(VRDataError, match="model.safetensors: damaged checkpoint"):
        train(store, tmp_path / "init", config(stages=((32, 4, 1, 1),)), init=newest(run_copy))


def test_a_missing_config_json_is_refused_not_a_restart_from_step_0(run_copy):
    for checkpoint in (run_copy / "checkpoints").glob("step-*"):
        (checkpoint / "config.json").unlink()
    result = cli("run", "--resume", str(run_copy))
    line = one_error_line(result)
    assert "step-00000004/config.json" in line and "missing" in line
    assert "starting from step 0" not in result.output


@pytest.mark.parametrize("name, change, reason", [
    ("state.json", lambda d: d.update(step="abc"), "step: input should be a valid integer"),
    ("state.json", lambda d: d.update(loaders=[{}]), "loaders.0.epoch: field required"),
    ("config.json", lambda d: d.pop("extra"), "'extra' is missing"),
])
def test_valid_json_with_wrong_contents_is_one_line(run_copy, name, change, reason):
    for checkpoint in (run_copy / "checkpoints").glob("step-*"):
        document = json.loads((checkpoint / name).read_text())
        change(document)
        (checkpoint / name).write_text(json.dumps(document))
        if name != "config.json":
            rewrite_digest(checkpoint, name)
    line = one_error_line(cli("run", "--resume", str(run_copy)))
    assert f"step-00000004/{name}" in line and reason in line


def test_a_pickle_in_trainer_pt_is_refused_in_one_line_and_never_run(run_copy):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled a trainer state",))

    for checkpoint in (run_copy / "checkpoints").glob("step-*"):
        (checkpoint / "trainer.pt").write_bytes(pickle.dumps(Boom()))
        rewrite_digest(checkpoint, "trainer.pt")
    line = one_error_line(cli("run", "--resume", str(run_copy)))
    assert "step-00000004/trainer.pt" in line and "refused" in line


def test_a_run_directory_in_use_is_refused_naming_the_pid_and_host(run_copy):
    with exclusive_lock(run_copy / ".lock", "vrtrain run", subject=run_copy):
        line = one_error_line(cli("run", "--resume", str(run_copy)))
    assert f"in use by PID {os.getpid()} on " in line
    assert not (run_copy / ".lock").exists()


def test_out_naming_an_existing_file_is_refused(store, tmp_path):  # noqa: F811
    target = tmp_path / "file"
    target.write_text("mine")
    sets = [item for value in TINY for item in ("--set", value)]
    line = one_error_line(cli("run", "--store", str(store), "--out", str(target), *sets,
                              "--set", "curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=2}]"))
    assert "is not a directory" in line and target.read_text() == "mine"


def test_denoising_on_a_store_without_pretrain_tracks_is_one_line_and_leaves_no_run_directory(store, tmp_path):  # noqa: F811,E501
    sets = [item for value in TINY for item in ("--set", value)]
    line = one_error_line(cli("run", "--store", str(store), "--out", str(tmp_path / "run"), "--objective", "denoise",
                              *sets, "--set", "curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=2}]"))
    assert "mixer.pretrain_sources" in line
    assert not (tmp_path / "run").exists()


def test_metrics_are_trimmed_when_a_run_killed_before_its_first_checkpoint_resumes(run_copy):
    shutil.rmtree(run_copy / "checkpoints")     # killed before any checkpoint: steps 1-4 logged
    assert [r["step"] for r in read_metrics(run_copy) if r.get("kind") == "train"] == [1, 2, 3, 4]
    result = cli("run", "--resume", str(run_copy))
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run_copy) if r.get("kind") == "train"] == [1, 2, 3, 4]


def test_a_full_disk_is_refused_before_the_save_with_the_space_needed(store, tmp_path, monkeypatch):  # noqa: F811
    from vr_model.train import state

    monkeypatch.setattr(state.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    with pytest.raises(VRDataError, match=r"no space for a checkpoint: it needs about [\d.]+ MiB, the disk has"):
        train(store, tmp_path / "run", config(stages=((32, 4, 1, 1),)))
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


def test_a_disk_that_fills_during_the_save_is_one_line_with_the_space_needed(store, tmp_path, monkeypatch):  # noqa: F811,E501
    from vr_model.network import checkpoint

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(VRDataError, match=r"disk full while saving step-00000001: a checkpoint needs about [\d.]+ MiB"):
        train(store, tmp_path / "run", config(stages=((32, 4, 1, 1),)))
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


def test_run_files_follow_the_umask(finished_run):
    checkpoint = newest(finished_run)
    # The fixture ran under the test process's umask; every file gets 0666 less it.
    umask = os.umask(0)
    os.umask(umask)
    for path in [finished_run / "config.toml", finished_run / "loss.png", finished_run / "metrics.jsonl",
                 *checkpoint.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o777 & ~umask


def test_a_finished_run_gets_more_steps_on_its_last_stage_and_nothing_else(run_copy):
    refused = one_error_line(cli("run", "--resume", str(run_copy), "--set", "train.lr=1e-2"))
    assert "--set train.lr with --resume" in refused
    refused = one_error_line(cli("run", "--resume", str(run_copy), "--set", "curriculum.0.steps=3"))
    assert "--set curriculum.0.steps with --resume" in refused
    result = cli("run", "--resume", str(run_copy), "--set", "curriculum.0.steps=5")
    assert result.exit_code == 0, result.output
    assert "done: step 5, 1 steps" in result.output
    assert sorted(step_losses(run_copy)) == [1, 2, 3, 4, 5]


def test_run_warns_when_the_warmup_is_longer_than_the_run(store, tmp_path):  # noqa: F811
    sets = [item for value in TINY for item in ("--set", value)]   # warmup 2 steps
    result = cli("run", "--store", str(store), "--out", str(tmp_path / "run"), *sets,
                 "--set", "curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=1}]")
    assert result.exit_code == 0, result.output
    assert "warning: train.warmup_steps 2 is more than the run's 1 steps" in result.output


def test_counters_of_the_wrong_type_are_one_line(run_copy):
    for checkpoint in (run_copy / "checkpoints").glob("step-*"):
        document = json.loads((checkpoint / "state.json").read_text())
        document["counters"]["examples"] = "many"
        (checkpoint / "state.json").write_text(json.dumps(document))
        rewrite_digest(checkpoint, "state.json")
    line = one_error_line(cli("run", "--resume", str(run_copy)))
    assert "state.json" in line and "counters.examples: input should be a valid integer" in line
