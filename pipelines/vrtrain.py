"""`vrtrain`: the model CLI (presets, training, separation, evaluation, export).

Each group of commands lives in its own module and registers on `app` when imported.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train and run frame-primer vocal removers.")


@app.callback()
def cli() -> None:
    """Train and run frame-primer vocal removers."""
    # A callback keeps `vrtrain` a command group whatever the number of commands.


@app.command()
def presets() -> None:
    """List the model presets with their parameter counts."""
    from rich.table import Table

    from pipelines.common import console
    from vr_model.presets import DESCRIPTIONS, PRESETS, SEED_PARAMETERS, count_parameters

    table = Table(title="model presets")
    for column in ("preset", "parameters", "vs seed 108,229,338", "channels", "primers enc/dec", "heads", "max frames", "about"):
        table.add_column(column, justify="right" if column in ("parameters", "vs seed 108,229,338", "heads", "max frames") else "left")
    for name, config in PRESETS.items():
        parameters = count_parameters(config)
        ratio = parameters / SEED_PARAMETERS - 1
        table.add_row(
            name,
            f"{parameters:,}",
            f"{ratio * 100:+.2f}%" if abs(ratio) < 0.1 else "-",
            " ".join(str(width) for width in config.channels),
            f"{'/'.join(map(str, config.encoder_primers))} | {'/'.join(map(str, config.decoder_primers))}",
            str(config.num_heads),
            str(config.max_frames),
            DESCRIPTIONS.get(name, ""),
        )
    console.print(table)


# Command modules register themselves on `app` when imported; a failing import is an error.
_COMMAND_MODULES: tuple[str, ...] = ("pipelines.train_cmd", "pipelines.separate_cmd")
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main() -> None:
    app()


if __name__ == "__main__":
    # `python -m pipelines.vrtrain` (and `torchrun -m pipelines.vrtrain`) runs this file as
    # __main__, while the command modules register on `pipelines.vrtrain.app`: run that one.
    from pipelines.vrtrain import main as registered_main

    registered_main()
