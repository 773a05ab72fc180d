"""`vrtrain run` and `vrtrain config`: train the frame primer from a store (docs/training.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipelines.common import console, user_errors
from pipelines.vrtrain import app
from vr_data.errors import VRDataError


@app.command("run")
@user_errors
def run_command(
    store: Path = typer.Option(None, "--store", help="The store to train on (vrdata build-shards). "
                                                    "With --resume: defaults to the run's store."),
    out: Path = typer.Option(None, "--out", help="The run directory (config, checkpoints, logs)."),
    config: Path = typer.Option(None, "--config", help="A TOML run config (`vrtrain config` prints every key)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set train.lr=3e-4 (repeatable)."),
    resume: Path = typer.Option(None, "--resume", help="Continue this run directory from its latest checkpoint."),
    init: Path = typer.Option(None, "--init", help="Start from this checkpoint's weights (same model config)."),
    init_partial: bool = typer.Option(False, "--init-partial",
                                      help="With --init: load the tensors that match, list the rest (another "
                                           "model config, e.g. a denoising checkpoint's linear head)."),
    objective: str = typer.Option(None, "--objective", help="supervised or denoise (= --set train.objective=...)."),
    freeze: str = typer.Option(None, "--freeze", help="none or encoders: frozen while finetuning (= --set train.freeze=...)."),
    unfreeze_after: int = typer.Option(None, "--unfreeze-after", metavar="STEPS",
                                       help="Train the frozen part again after STEPS steps (= --set train.unfreeze_after=...)."),
) -> None:
    """Train (or with --resume continue training) a model; under torchrun, one process per GPU."""
    from vr_model.train import load_config, train
    from vr_model.train.loop import RUN_JSON

    if init_partial and init is None:
        raise VRDataError(None, "--init-partial goes with --init CHECKPOINT")
    shortcuts = [f"train.{key}={value}" for key, value in
                 (("objective", objective and f'"{objective}"'), ("freeze", freeze and f'"{freeze}"'),
                  ("unfreeze_after", unfreeze_after)) if value is not None]
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise VRDataError(out, "--resume names the run directory; leave --out out")
        if config is not None or shortcuts or init is not None or init_partial:
            raise VRDataError(resume, "a resumed run keeps its own config.toml and weights: no --config, "
                                      "--objective, --freeze, --unfreeze-after, --init or --init-partial "
                                      "(--set only for data.workers and the like: docs/training.md)")
        if store is None:
            try:
                store = Path(json.loads((resume / RUN_JSON).read_text())["store"])
            except (OSError, ValueError, KeyError):
                raise VRDataError(resume, f"no {RUN_JSON} naming the store; pass --store") from None
        summary = train(store, resume, None, resume=True, resume_settings=tuple(overrides))
    else:
        if store is None or out is None:
            raise VRDataError(None, "vrtrain run needs --store and --out (or --resume RUN_DIR)")
        resolved = load_config(config, [*overrides, *shortcuts])
        summary = train(store, out, resolved, init=init, init_partial=init_partial)
    console.print(f"run directory: {summary.run_dir}; last checkpoint: {summary.last_checkpoint}", highlight=False)


@app.command("config")
@user_errors
def config_command(
    config: Path = typer.Option(None, "--config", help="Print this TOML config resolved (defaults filled in)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set train.lr=3e-4 (repeatable)."),
) -> None:
    """Print the full run config (defaults, or a file's resolved), a comment above every key."""
    from vr_model.train import dump_config, load_config

    print(dump_config(load_config(config, overrides)))
