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
    init_partial: Path = typer.Option(None, "--init-partial",
                                      help="Start from the tensors of this checkpoint that match; list the rest."),
) -> None:
    """Train (or with --resume continue training) a model; under torchrun, one process per GPU."""
    from vr_model.train import load_config, train
    from vr_model.train.loop import RUN_JSON

    if init is not None and init_partial is not None:
        raise VRDataError(None, "use --init or --init-partial, not both")
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise VRDataError(out, "--resume names the run directory; leave --out out")
        if config is not None or overrides or init is not None or init_partial is not None:
            raise VRDataError(resume, "a resumed run keeps its own config.toml and weights: "
                                      "no --config, --set, --init or --init-partial")
        if store is None:
            try:
                store = Path(json.loads((resume / RUN_JSON).read_text())["store"])
            except (OSError, ValueError, KeyError):
                raise VRDataError(resume, f"no {RUN_JSON} naming the store; pass --store") from None
        summary = train(store, resume, None, resume=True)
    else:
        if store is None or out is None:
            raise VRDataError(None, "vrtrain run needs --store and --out (or --resume RUN_DIR)")
        resolved = load_config(config, overrides)
        summary = train(store, out, resolved, init=init or init_partial, init_partial=init_partial is not None)
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
