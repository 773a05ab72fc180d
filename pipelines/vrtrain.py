"""`vrtrain`: the model CLI (presets, training, separation, evaluation, export).

Each group of commands lives in its own module (`train_cmd`, `separate_cmd`) and registers on
`pipelines.apps.vrtrain_app` when imported; this module imports them, so `app` has them all.
"""

from __future__ import annotations

# Importing a command module registers its commands, in this order in `--help`.
from pipelines import train_cmd  # noqa: F401, I001
from pipelines import separate_cmd  # noqa: F401
from pipelines.apps import vrtrain_app as app


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
