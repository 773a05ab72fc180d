"""`vrdata`: the data CLI. Each command lives in its own module and registers on
`pipelines.apps.vrdata_app` when imported; this module imports them, so `app` has them all."""

from __future__ import annotations

# Importing a command module registers its commands, in this order in `--help`.
from pipelines import scan_cmd  # noqa: F401, I001
from pipelines import shards_cmd  # noqa: F401
from pipelines import mix_cmd  # noqa: F401
from pipelines import stats_cmd  # noqa: F401
from pipelines import check_cmd  # noqa: F401
from pipelines.apps import vrdata_app as app
from pipelines.common import run_app, version_option


@app.callback()
def cli(version: bool = version_option("vrdata")) -> None:
    """Vocal-remover datasets: scan, shards, stats.

    Exit codes: 0 ok, 1 damage found (verify), 2 user error, 70 internal error (a bug),
    130 interrupted.
    """


def main() -> None:
    from pipelines.allocator import ensure_fast_allocator

    ensure_fast_allocator()  # once, before any work: tcmalloc or glibc tunables (pipelines/allocator.py)
    run_app(app)


if __name__ == "__main__":
    # `python -m pipelines.vrdata` runs this file as __main__, while the command modules register
    # on `pipelines.vrdata.app`: run that one.
    from pipelines.vrdata import main as registered_main

    registered_main()
