"""`vrdata`: the data CLI. Each command lives in its own module and registers on `app`."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Vocal-remover datasets: scan, shards, stats.")

# Command modules register themselves on `app` when imported; a missing one is skipped so the
# CLI stays usable while a module is being written.
_COMMAND_MODULES = ("pipelines.scan_cmd", "pipelines.shards_cmd", "pipelines.mix_cmd", "pipelines.stats_cmd")
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as error:
        if error.name != _name:
            raise


def main() -> None:
    app()


if __name__ == "__main__":
    main()
