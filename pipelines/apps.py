"""The two Typer apps, `vrtrain_app` and `vrdata_app`, that the command modules register on.

They live here, not in `vrtrain.py`/`vrdata.py`, so that the dependencies stay one way and plain:
a command module (`*_cmd.py`) imports its app from here and decorates its functions; the CLI
module (`vrtrain.py`, `vrdata.py`) imports its command modules by name, which registers them.
No module imports the one that imports it (tests/test_layout.py checks it).
"""

from __future__ import annotations

import typer

# rich_markup_mode=None: click's help layout, readable at 80 columns (rich's panels cut long option
# names with '…' and wrapped descriptions in a 20-character column).
vrtrain_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="Train and run frame-primer vocal removers.")
vrdata_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Vocal-remover datasets: scan, shards, stats.")
