"""What a run prints: the loss with 4 significant digits, progress lines and the rich bar that
fit 80 columns (the least useful fields dropped first), train.log with every field."""

from __future__ import annotations

import io
import re

from rich.console import Console

from vr_model.train.runlog import RunLog, format_loss

FIELDS = dict(step=99_999, stage="10/12", loss=1.23456e-4, lr=3e-4, examples_per_s=12_345.6, data_wait=0.123,
              eta_seconds=3_600_000)


def test_the_loss_is_printed_with_four_significant_digits():
    assert format_loss(8.123456e-5) == "8.123e-05"
    assert format_loss(0.123456) == "0.1235" and format_loss(12.3456) == "12.35"
    assert format_loss(None) == "-" and format_loss(float("nan")) == "-"


def test_plain_progress_lines_fit_80_columns_off_a_terminal_and_train_log_has_every_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    log = RunLog(tmp_path, True, total_steps=100_000, progress="plain", tensorboard=False)
    log.progress(**FIELDS)
    line = capsys.readouterr().out.rstrip("\n")
    assert len(line) <= 80, line
    assert "step 99999/100000" in line and "loss 0.0001235" in line and "eta 1000:00:00" in line
    assert "data wait" not in line                                  # the least useful field went first
    logged = (tmp_path / "train.log").read_text()
    assert "data wait 12.3%" in logged and "lr 3.00e-04" in logged  # the log keeps them all
    monkeypatch.setenv("COLUMNS", "40")
    log.progress(**FIELDS)
    narrow = capsys.readouterr().out.rstrip("\n")
    assert len(narrow) <= 40 and narrow == "step 99999/100000  loss 0.0001235"
    log.close(plot=False)


def test_the_rich_progress_bar_fits_80_columns(tmp_path):
    stream = io.StringIO()
    console = Console(file=stream, width=80, force_terminal=True, color_system=None)
    log = RunLog(tmp_path, True, total_steps=100_000, progress="rich", tensorboard=False, console=console)
    log.progress(**FIELDS)
    log.close(plot=False)
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    lines = [line for chunk in visible.split("\n") for line in chunk.split("\r") if line.strip()]
    assert lines and max(len(line.rstrip()) for line in lines) <= 80, lines
    assert any("step 99999/100000" in line and "loss 0.0001235" in line and "eta" in line for line in lines), lines
