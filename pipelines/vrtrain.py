"""`vrtrain`: the model CLI (presets, training, separation, evaluation, export).

Each group of commands lives in its own module and registers on `app` when imported.
"""

from __future__ import annotations

import importlib

import typer

# rich_markup_mode=None: click's help layout, readable at 80 columns (rich's panels cut long option
# names with '…' and wrapped descriptions in a 20-character column).
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Train and run frame-primer vocal removers.")


def _version_option():
    from pipelines.common import version_option

    return version_option("vrtrain")


@app.callback()
def cli(version: bool = _version_option()) -> None:
    """Train and run frame-primer vocal removers."""
    # A callback keeps `vrtrain` a command group whatever the number of commands.


@app.command()
def presets() -> None:
    """List the model presets with their parameter counts."""
    from rich.table import Table

    from pipelines.common import console
    from vr_model.network.presets import DESCRIPTIONS, PRESETS, SEED_PARAMETERS, count_parameters

    # Readable at 80 columns: the numbers in one narrow table, the longer facts (channels,
    # primers, description) as wrapped lines under it, never cut to "...".
    table = Table(title="model presets", caption=f"vs seed: parameters relative to the seed model's {SEED_PARAMETERS:,}")
    for column in ("preset", "parameters", "vs seed", "heads", "max frames"):
        table.add_column(column, justify="left" if column == "preset" else "right", no_wrap=True)
    details = Table.grid(padding=(0, 2))
    details.add_column(no_wrap=True)
    details.add_column(overflow="fold")
    for name, config in PRESETS.items():
        parameters = count_parameters(config)
        ratio = parameters / SEED_PARAMETERS - 1
        table.add_row(name, f"{parameters:,}", f"{ratio * 100:+.2f}%" if abs(ratio) < 0.1 else "-",
                      str(config.num_heads), str(config.max_frames))
        details.add_row(name, DESCRIPTIONS.get(name, ""))
        details.add_row("", f"channels {' '.join(str(width) for width in config.channels)}; frame primers per "
                            f"level: encoder {'/'.join(map(str, config.encoder_primers))}, decoder "
                            f"{'/'.join(map(str, config.decoder_primers))}")
    console.print(table)
    console.print(details)


# Command modules register themselves on `app` when imported; a failing import is an error.
_COMMAND_MODULES: tuple[str, ...] = ("pipelines.train_cmd", "pipelines.separate_cmd")
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main() -> None:
    from pipelines.allocator import ensure_fast_allocator

    from pipelines.common import run_app

    ensure_fast_allocator()  # once, before any work: tcmalloc or glibc tunables (pipelines/allocator.py)
    run_app(app)  # a bug exits 70 with its traceback, never 1 (docs/cli.md)


if __name__ == "__main__":
    # `python -m pipelines.vrtrain` (and `torchrun -m pipelines.vrtrain`) runs this file as
    # __main__, while the command modules register on `pipelines.vrtrain.app`: run that one.
    from pipelines.vrtrain import main as registered_main

    registered_main()
