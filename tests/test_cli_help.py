"""Every command's `--help` is readable at 80 columns: nothing cut with '…', no line wider than
the terminal, descriptions in a column wide enough to read (issue 20, section 5)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from pipelines.vrdata import app as vrdata_app
from pipelines.vrtrain import app as vrtrain_app

runner = CliRunner()


def commands(app) -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("app, command", [(vrdata_app, name) for name in commands(vrdata_app)]
                         + [(vrtrain_app, name) for name in commands(vrtrain_app)])
def test_help_fits_80_columns_without_cutting(app, command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    # Option descriptions start within the first 34 columns, so they get 46 or more to wrap in.
    for line in text.splitlines():
        match = re.match(r"^  (-\S.*?)\s{2,}(\S)", line)
        if match:
            assert match.start(2) <= 34, line
