"""`vrdata`: the data CLI. Each command lives in its own module and registers on `app`."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Vocal-remover datasets: scan, shards, stats.")

# Command modules register themselves on `app` when imported. A module that fails to import is
# an error, never skipped: a renamed module must not make its command vanish.
_COMMAND_MODULES = ("pipelines.scan_cmd", "pipelines.shards_cmd", "pipelines.mix_cmd", "pipelines.stats_cmd")
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
