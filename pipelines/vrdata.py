"""`vrdata`: the data CLI. Each command lives in its own module and registers on `app`."""

from __future__ import annotations

import importlib

import typer

from pipelines.common import run_app, version_option

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Vocal-remover datasets: scan, shards, stats.")


@app.callback()
def cli(version: bool = version_option("vrdata")) -> None:
    """Vocal-remover datasets: scan, shards, stats.

    Exit codes: 0 ok, 1 damage found (verify), 2 user error, 70 internal error (a bug),
    130 interrupted.
    """


# Command modules register themselves on `app` when imported. A module that fails to import is
# an error, never skipped: a renamed module must not make its command vanish.
_COMMAND_MODULES = ("pipelines.scan_cmd", "pipelines.shards_cmd", "pipelines.mix_cmd", "pipelines.stats_cmd",
                    "pipelines.check_cmd")
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main() -> None:
    from pipelines.allocator import ensure_fast_allocator

    ensure_fast_allocator()  # once, before any work: tcmalloc or glibc tunables (pipelines/allocator.py)
    run_app(app)


if __name__ == "__main__":
    # `python -m pipelines.vrdata` runs this file as __main__, while the command modules register
    # on `pipelines.vrdata.app`: run that one.
    from pipelines.vrdata import main as registered_main

    registered_main()
