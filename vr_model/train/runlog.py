"""What a run tells the user and leaves behind: progress, `train.log`, `metrics.jsonl`,
TensorBoard events and `loss.png`. Only rank 0 makes one of these (`RunLog(enabled=False)`
elsewhere does nothing).

- progress: a rich bar on a terminal (stage, step/total, loss, lr, examples/s, data-wait %, ETA),
  plain lines on stdout otherwise (log files, CI); both fit the terminal's width (`COLUMNS`, 80
  off a terminal) by dropping the least useful fields first (`fit_fields`);
- `train.log`: the same lines and every notice, plain text, appended (a resumed run continues it);
- `metrics.jsonl`: one JSON record per log interval and per validation; every start trims it to
  the step it starts from (the checkpoint's, or 0: records a killed run wrote before its first
  checkpoint are dropped too), rewritten atomically, so the history has no duplicates;
- `tensorboard/`: the same scalars (`purge_step` on resume hides the replayed steps);
- `loss.png`: training and validation loss against the step, written at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from vr_data.io import atomic_write_text, atomic_write_with, read_jsonl

METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
LOSS_PLOT = "loss.png"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of `RUN_DIR/metrics.jsonl` (a torn last line, from a kill, is skipped)."""
    return read_jsonl(Path(run_dir) / METRICS)


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop the records past `step` from `RUN_DIR/metrics.jsonl` (the step a run starts from:
    its checkpoint's, or 0), so a killed run's records are not repeated by its resume."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    records = read_metrics(run_dir)
    kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step]
    if len(kept) != len(records) or path.stat().st_size != sum(len(json.dumps(r)) + 1 for r in kept):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_loss(loss: float | None) -> str:
    """A loss with 4 significant digits (`1.234e-04`, `0.5`); `-` when there is none."""
    return "-" if loss is None or math.isnan(loss) else f"{loss:.4g}"


BAR_WIDTH = 10


def fit_fields(fields: list[tuple[int, str]], width: int, separator: str = "  ") -> str:
    """The fields' texts joined in order, leaving out the lowest `priority` fields (the first
    number of each pair; higher is kept longer) until the line fits `width` characters."""
    kept = list(fields)
    while len(kept) > 1 and len(separator.join(text for _, text in kept)) > width:
        kept.remove(min(kept, key=lambda field: field[0]))
    return separator.join(text for _, text in kept)


def progress_fields(stage: str, step: int, total_steps: int, loss: float | None, lr: float, examples_per_s: float,
                    data_wait: float, eta_seconds: float) -> list[tuple[int, str]]:
    """The progress line's fields in display order, each with its priority (higher: kept longer):
    step and loss last of all, then the ETA, the stage, examples/s, the lr, the data wait."""
    return [(4, f"stage {stage}"), (9, f"step {step}/{total_steps}"), (8, f"loss {format_loss(loss)}"),
            (2, f"lr {lr:.2e}"), (3, f"{examples_per_s:.1f} ex/s"), (1, f"data wait {100 * data_wait:.1f}%"),
            (6, f"eta {format_seconds(eta_seconds)}")]


def line_width() -> int:
    """The width progress lines must fit: the terminal's, `COLUMNS` if set, else 80."""
    return shutil.get_terminal_size((80, 24)).columns


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, progress: str = "auto",
                 tensorboard: bool = True, resume_step: int | None = None, console=None):
        self.enabled = enabled
        self.run_dir = run_dir
        self.total_steps = total_steps
        self._writer = None
        self._progress = None
        self._task = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        trim_metrics(run_dir, resume_step or 0)
        self._metrics = open(run_dir / METRICS, "a")
        self._log = open(run_dir / TRAIN_LOG, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / TENSORBOARD),
                                         purge_step=None if resume_step is None else resume_step + 1)
        rich = progress == "rich" or (progress == "auto" and sys.stdout.isatty())
        if rich:
            from rich.progress import BarColumn, Progress, TextColumn

            # The bar, then one text fitted to what is left of the line (`progress`).
            self._progress = Progress(BarColumn(bar_width=BAR_WIDTH), TextColumn("{task.fields[status]}"),
                                      console=console)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=resume_step or 0,
                                                 status=f"step {resume_step or 0}/{total_steps}")

    # -- lines -------------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """A notice: printed, and appended to train.log with a timestamp."""
        if not self.enabled:
            return
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self._log.flush()
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def progress(self, step: int, stage: str, loss: float | None, lr: float, examples_per_s: float,
                 data_wait: float, eta_seconds: float) -> None:
        """The progress line: a rich bar on a terminal, else a plain line, each fitted to the
        width; train.log gets every field."""
        if not self.enabled:
            return
        fields = progress_fields(stage, step, self.total_steps, loss, lr, examples_per_s, data_wait, eta_seconds)
        whole = fit_fields(fields, 10**6)
        if self._progress is not None:
            # rich's line: the bar, a space, then the fields; one column spare for the cursor.
            status = fit_fields(fields, self._progress.console.width - BAR_WIDTH - 2)
            self._progress.update(self._task, completed=step, status=status)
        else:
            print(fit_fields(fields, line_width()), flush=True)
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {whole}\n")
        self._log.flush()

    # -- records -----------------------------------------------------------------------------------
    def record(self, record: dict) -> None:
        """One metrics.jsonl line; its numeric fields also go to TensorBoard at `record['step']`."""
        if not self.enabled:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._writer is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self, plot: bool = True) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._metrics.close()
        self._log.close()
        if plot:
            plot_losses(self.run_dir)


def plot_losses(run_dir: Path) -> Path | None:
    """`RUN_DIR/loss.png`: training loss per log interval and validation loss, against the step."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in records if r.get("kind") == "valid"]
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axes.plot(*zip(*train), label="train", linewidth=1)
    if valid:
        axes.plot(*zip(*valid), "o-", label="valid", linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = run_dir / LOSS_PLOT
    try:
        atomic_write_with(path, lambda temporary: figure.savefig(temporary, format="png"))
    finally:
        plt.close(figure)
    return path
