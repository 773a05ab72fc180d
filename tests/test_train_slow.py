"""The trainer end to end in real processes: a SIGKILLed run resumes bit for bit (across a
curriculum stage boundary, with a DataLoader worker), a SIGTERMed run saves its step, exits 75
with the resume command and resumes bit for bit, and DDP under torchrun (2 gloo ranks with
batch b equal 1 process with batch 2b; a DDP run resumes exactly)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train import TINY, config, step_losses, store  # noqa: F401  (the module-scoped store fixture)
from vr_model.network.checkpoint import list_checkpoints
from vr_model.train import EXIT_PREEMPTED, train
from vr_model.train.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", VR_PROGRESS="0")


def cli_args(store: Path, out: Path, *overrides: str, stages) -> list[str]:
    curriculum = ", ".join(f"{{crop_frames={c}, batch_size={b}, accumulation={a}, steps={s}}}" for c, b, a, s in stages)
    sets = [*TINY, f"curriculum=[{curriculum}]", *overrides]
    return ["run", "--store", str(store), "--out", str(out)] + [part for value in sets for part in ("--set", value)]


@pytest.mark.slow
def test_a_sigkilled_run_resumes_with_the_same_losses_across_a_stage_boundary(store, tmp_path):  # noqa: F811
    stages = ((32, 4, 1, 5), (64, 2, 2, 5))
    overrides = ("data.workers=1", "checkpoint.every=2", "model.overrides.dropout=0.1", "validation.every=3")
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "pipelines.vrtrain", *cli_args(store, killed, *overrides, stages=stages)],
                               env=ENVIRONMENT, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + 240
    while not list_checkpoints(killed / "checkpoints"):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)        # the trainer and its loader worker, mid-run
    process.wait()
    at_kill = [path.name for path in list_checkpoints(killed / "checkpoints")]
    assert at_kill and at_kill[-1] != "step-00000010", f"the run finished before the kill: {at_kill}"

    resumed = train(store, killed, None, resume=True)
    uninterrupted = tmp_path / "uninterrupted"
    train(store, uninterrupted, config(*overrides, stages=stages))
    expected = step_losses(uninterrupted)
    assert sorted(expected) == list(range(1, 11))
    assert resumed.steps_this_run < 10 and int(at_kill[-1][5:]) <= 5  # the resume crossed the stage boundary
    assert step_losses(killed) == expected                            # bit for bit, every step
    for name in ("model.safetensors", "ema.safetensors"):
        assert ((killed / "checkpoints" / "step-00000010" / name).read_bytes()
                == (uninterrupted / "checkpoints" / "step-00000010" / name).read_bytes())


@pytest.mark.slow
def test_a_sigtermed_run_saves_its_step_exits_75_and_resumes_bit_for_bit(store, tmp_path):  # noqa: F811
    """SIGTERM to the trainer and its loader worker (as Slurm signals a job) after step 2, while
    step 3 runs: step 3 is finished and saved, and the resumed run computes what an uninterrupted
    one does."""
    stages = ((32, 4, 1, 3), (64, 2, 2, 3))
    overrides = ("data.workers=1", "model.overrides.dropout=0.1")
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "pipelines.vrtrain", *cli_args(store, run, *overrides, stages=stages)],
                               env=ENVIRONMENT, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + 240
    while not any(record.get("step", 0) >= 2 for record in read_metrics(run)):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no step 2 within 240 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    stderr = process.communicate(timeout=240)[1].decode()
    assert process.returncode == EXIT_PREEMPTED, stderr[-3000:]
    saved = [path.name for path in list_checkpoints(run / "checkpoints")]
    assert saved and saved[-1] != "step-00000006", f"the run finished before the signal: {saved}"
    assert f"resume with: vrtrain run --resume {run}" in " ".join(stderr.split())
    assert f"interrupted by SIGTERM at step {int(saved[-1][5:])}/6" in (run / "train.log").read_text()

    train(store, run, None, resume=True)
    uninterrupted = tmp_path / "uninterrupted"
    train(store, uninterrupted, config(*overrides, stages=stages))
    assert step_losses(run) == step_losses(uninterrupted)             # bit for bit, every step


def torchrun(args: list[str], port: int) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "pipelines.vrtrain", *args]
    result = subprocess.run(command, env=ENVIRONMENT, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.slow
def test_two_gloo_ranks_with_batch_b_equal_one_process_with_batch_2b_and_resume_exactly(store, tmp_path):  # noqa: F811
    stages = ((32, 8, 1, 3), (64, 4, 2, 2))   # global batch 8; 2 ranks: 4 per rank, then 2 x 2
    overrides = ("checkpoint.every=1", "validation.every=2")
    single = tmp_path / "single"
    train(store, single, config(*overrides, stages=stages))
    ddp = tmp_path / "ddp"
    torchrun(cli_args(store, ddp, *overrides, stages=stages), port=29531)
    one, two = step_losses(single), step_losses(ddp)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-6 * max(1.0, abs(one[step])), (step, one[step], two[step])
    assert not list((ddp / "checkpoints").glob(".*"))   # rank 1 wrote nothing half-made beside rank 0

    # Resume under DDP from step 2 (mid-stage): the same losses as the uninterrupted DDP run.
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp, resumed)
    for directory in list_checkpoints(resumed / "checkpoints"):
        if int(directory.name[5:]) > 2:
            shutil.rmtree(directory)
    torchrun(["run", "--resume", str(resumed)], port=29532)
    assert step_losses(resumed) == two
