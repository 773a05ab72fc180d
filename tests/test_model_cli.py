"""`vrtrain presets`."""

from __future__ import annotations

from typer.testing import CliRunner

from pipelines.vrtrain import app


def test_presets_lists_every_preset_with_its_parameter_count():
    result = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "frame-primer" in result.output and "108,190,824" in result.output
    assert "tiny" in result.output and "2,698,948" in result.output
