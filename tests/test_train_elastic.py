"""Elastic resume end to end: a run at 2 gloo ranks x 2 loader workers (torchrun, CPU) over
several epochs and two curriculum stages, cut back to a mid-epoch checkpoint in its first stage
(what a kill leaves: checkpoints up to step 4, ledger and metrics lines past it) and resumed at
1 rank and at 4 ranks, with other worker counts: the ledgers (`examples.jsonl`) equal the
uninterrupted run's step by step, no example of an epoch is trained on twice or skipped, and
the losses agree to 1e-5 relative (only the reduction order differs). The torchrun tests are
slow (process start-ups: 2 x 2 workers, then 4 ranks): 108-117 CPU seconds together with the
store; 118 s of wall time at load average 5-7 on 2 cores (the store fixture included),
2.5-5.3 minutes at 11-16."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import step_losses, store  # noqa: F401  (the module-scoped store fixture)
from test_train_slow import ENVIRONMENT, ROOT, cli_args
from vr_model.network.checkpoint import list_checkpoints
from vr_model.train import train
from vr_model.train.ledger import read_ledger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Global batch 4, 12 examples an epoch (3 steps): stage 1 is steps 1-5 (epochs 0, 1), stage 2
# steps 6-10 (epochs 2, 3: a stage starts a new epoch).
STAGES = ((32, 4, 1, 5), (64, 4, 1, 5))
OVERRIDES = ("log.examples=true", "checkpoint.every=2", "mixer.examples_per_epoch=12", "data.workers=2")
KILLED_AT = 4  # mid-epoch 1, before the stage boundary


def torchrun(processes: int, args: list[str], port: int) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(port), "-m", "pipelines.vrtrain", *args]
    result = subprocess.run(command, env=ENVIRONMENT, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def cut_back(run: Path, copy: Path, step: int) -> Path:
    """A copy of `run` as a kill after checkpoint `step` leaves it (later lines in the logs)."""
    shutil.copytree(run, copy)
    for directory in list_checkpoints(copy / "checkpoints"):
        if int(directory.name[5:]) > step:
            shutil.rmtree(directory)
    return copy


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("elastic") / "two-ranks"
    torchrun(2, cli_args(store, run, *OVERRIDES, stages=STAGES), port=29541)
    return run


def assert_same_training(resumed: Path, reference: Path) -> None:
    """The same examples at every step (the ledger), each once per epoch, and the same losses."""
    ledger, expected = read_ledger(resumed), read_ledger(reference)
    assert [r["step"] for r in ledger] == list(range(1, 11))
    assert ledger == expected
    losses, reference_losses = step_losses(resumed), step_losses(reference)
    assert sorted(losses) == sorted(reference_losses) == list(range(1, 11))
    for step, loss in reference_losses.items():
        assert abs(losses[step] - loss) <= 1e-5 * abs(loss), (step, losses[step], loss)


@pytest.mark.slow
def test_two_ranks_with_two_workers_make_each_example_of_an_epoch_once(uninterrupted):
    by_epoch: dict[int, list[int]] = {}
    for record in read_ledger(uninterrupted):
        assert len(record["indices"]) == 4 and [e["index"] for e in record["examples"]] == record["indices"]
        by_epoch.setdefault(record["epoch"], []).extend(record["indices"])
    # epochs 0 and 2 whole; 1 and 3 cut short by the stage's end and the run's end
    assert {epoch: sorted(indices) for epoch, indices in by_epoch.items()} == {
        0: list(range(12)), 1: list(range(8)), 2: list(range(12)), 3: list(range(8))}


@pytest.mark.slow
def test_resumed_at_one_rank_with_one_worker_it_trains_on_the_same_examples(uninterrupted, tmp_path):
    run = cut_back(uninterrupted, tmp_path / "one-rank", KILLED_AT)
    summary = train(_store_of(run), run, _resumed(run, "data.workers=1"), resume=True)  # workers 2 -> 1
    assert summary.steps_this_run == 10 - KILLED_AT
    assert_same_training(run, uninterrupted)


@pytest.mark.slow
def test_resumed_at_four_ranks_then_at_one_with_two_workers_across_the_stage_boundary(uninterrupted, tmp_path):
    four = cut_back(uninterrupted, tmp_path / "four-ranks", KILLED_AT)
    torchrun(4, ["run", "--resume", str(four), "--set", "data.workers=0"], port=29542)   # workers 2 -> 0
    assert_same_training(four, uninterrupted)
    # Checkpointed at 4 ranks without workers mid-epoch in stage 2; resumed at 1 rank with 2 workers.
    one = cut_back(four, tmp_path / "then-one-rank", 6)
    train(_store_of(one), one, _resumed(one, "data.workers=2"), resume=True)
    assert_same_training(one, uninterrupted)


def _resumed(run: Path, *overrides: str):
    """The run's own config with the overrides `vrtrain run --resume RUN --set ...` passes."""
    from vr_model.train import load_config

    return load_config(run / "config.toml", list(overrides))


def _store_of(run: Path) -> Path:
    import json

    return Path(json.loads((run / "run.json").read_text())["store"])


def test_a_stage_whose_global_batch_does_not_split_is_named_with_the_rank_counts_that_would_work():
    from vr_data.errors import VRDataError
    from vr_model.train.config import Stage
    from vr_model.train.elastic import check_stage_splits

    curriculum = [Stage(32, 4, 3, 5), Stage(64, 2, 4, 5)]   # global batches 12 and 8
    check_stage_splits(curriculum, 4)
    with pytest.raises(VRDataError, match=r"^curriculum\.1: a global batch of 2 x 4 = 8 examples cannot be split over "
                                          r"3 ranks; rank counts that split every stage: 1, 2, 4$"):
        check_stage_splits(curriculum, 3)


def test_a_resume_may_change_the_workers_but_no_other_setting(store, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from pipelines.vrtrain import app
    from test_train import config
    from vr_model.train import dump_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(dump_config(config(*OVERRIDES, stages=STAGES)))
    result = CliRunner().invoke(app, ["run", "--resume", str(run), "--store", str(store), "--set", "train.lr=1e-2"])
    assert result.exit_code == 2
    assert "--set train.lr with --resume: a resumed run may only add steps" in result.output
    assert "or change data.workers" in result.output


def test_the_ledger_keeps_the_steps_up_to_the_checkpoint_and_refuses_a_non_regular_file(tmp_path):
    from vr_data.errors import VRDataError
    from vr_model.train.ledger import EXAMPLES, ExampleLedger

    ledger = ExampleLedger(tmp_path, True, True)
    for step in (1, 2, 3):
        ledger.add(step, 0, [{"index": 2 * step + 1}, {"index": 2 * step}], 1)
    ledger.close()
    with open(tmp_path / EXAMPLES, "a") as handle:
        handle.write('{"step": 4, "epo')                    # torn by a kill
    ExampleLedger(tmp_path, True, True, steps_done=2).close()  # resumed from step 2
    assert [(r["step"], r["indices"]) for r in read_ledger(tmp_path)] == [(1, [2, 3]), (2, [4, 5])]
    other = tmp_path / "other"
    other.mkdir()
    (other / EXAMPLES).symlink_to(tmp_path / EXAMPLES)
    with pytest.raises(VRDataError, match="cannot write the example ledger here: a symbolic link"):
        ExampleLedger(other, True, True)
