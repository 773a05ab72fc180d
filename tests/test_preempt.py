"""Stopping a run on a signal (SIGTERM from a cluster, Ctrl-C): a checkpoint at the step the
signal ends, the interruption in train.log, the exact resume command, a bit-exact resume; a
second signal stops at once; the time-based checkpoint interval."""

from __future__ import annotations

import os
import signal

import pytest

from test_train import config, step_losses, store  # noqa: F401  (the module-scoped store fixture)
from vr_data.errors import VRDataError
from vr_model.network.checkpoint import list_checkpoints
from vr_model.train import EXIT_PREEMPTED, OBJECTIVES, TrainingInterrupted, load_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = ((32, 4, 1, 3), (64, 2, 2, 3))   # steps 4-6 have two micro-batches each


def signalling_objective(monkeypatch, at_step: int, signals: tuple[int, ...]) -> str:
    """Register an objective that sends `signals` to this process in step `at_step`'s first
    micro-batch (mid-step: the second micro-batch is still to come), then computes the loss."""
    supervised = OBJECTIVES["supervised"]

    def signalling(model, batch, cfg, context):
        if context.step == at_step and context.micro == 0:
            for number in signals:
                os.kill(os.getpid(), number)
        return supervised(model, batch, cfg, context)

    monkeypatch.setitem(OBJECTIVES, "signalling", signalling)
    return "train.objective=signalling"


def test_sigterm_mid_step_saves_that_step_logs_it_and_the_run_resumes_bit_for_bit(store, tmp_path, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    objective = signalling_objective(monkeypatch, at_step=4, signals=(signal.SIGTERM,))
    with pytest.raises(TrainingInterrupted) as caught:
        train(store, run, config(objective, "model.overrides.dropout=0.1", stages=STAGES))
    assert caught.value.saved and caught.value.exit_code == EXIT_PREEMPTED == 75
    assert f"resume with: vrtrain run --resume {run}" in str(caught.value)
    # step 3 ended the first stage; step 4 is the one the signal came in
    assert [path.name for path in list_checkpoints(run / "checkpoints")] == ["step-00000003", "step-00000004"]
    assert "interrupted by SIGTERM at step 4/6" in (run / "train.log").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL       # the run's handlers are gone

    resumed = train(store, run, None, resume=True)
    assert resumed.steps_this_run == 2
    uninterrupted = tmp_path / "uninterrupted"
    train(store, uninterrupted, config("model.overrides.dropout=0.1", stages=STAGES))
    assert step_losses(run) == step_losses(uninterrupted)          # bit for bit, every step
    for name in ("model.safetensors", "ema.safetensors"):
        assert ((run / "checkpoints" / "step-00000006" / name).read_bytes()
                == (uninterrupted / "checkpoints" / "step-00000006" / name).read_bytes())


def test_a_second_signal_stops_at_once_without_a_checkpoint(store, tmp_path, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    objective = signalling_objective(monkeypatch, at_step=2, signals=(signal.SIGINT, signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as caught:
        train(store, run, config(objective, "checkpoint.every=1", stages=STAGES))
    assert not caught.value.saved and caught.value.exit_code == 128 + signal.SIGTERM
    assert "interrupted again (SIGTERM)" in str(caught.value)
    assert f"the last checkpoint is {run / 'checkpoints' / 'step-00000001'}" in str(caught.value)
    assert [path.name for path in list_checkpoints(run / "checkpoints")] == ["step-00000001"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_checkpoint_every_minutes_saves_on_the_clock_beside_the_step_interval(store, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(store, run, config("checkpoint.every=1000", "checkpoint.every_minutes=1e-9", stages=((32, 4, 1, 3),)))
    assert [path.name for path in list_checkpoints(run / "checkpoints")] == [f"step-0000000{k}" for k in (1, 2, 3)]
    with pytest.raises(VRDataError, match="checkpoint.every_minutes: input should be greater than or equal to 0"):
        load_config(None, ["checkpoint.every_minutes=-1"])
