"""What a run tells the user and leaves behind: progress, `train.log`, `metrics.jsonl`,
TensorBoard events and `loss.png`. Only rank 0 makes one of these (`RunLog(enabled=False)`
elsewhere does nothing).

- progress: a rich bar on a terminal (stage, step/total, loss, lr, examples/s, data-wait %, ETA),
  plain lines on stdout otherwise (log files, CI);
- `train.log`: the same lines and every notice, plain text, appended (a resumed run continues it);
- `metrics.jsonl`: one JSON record per log interval and per validation; every start trims it to
  the step it starts from (the checkpoint's, or 0: records a killed run wrote before its first
  checkpoint are dropped too), rewritten atomically, so the history has no duplicates;
- `tensorboard/`: the same scalars (`purge_step` on resume hides the replayed steps);
- `loss.png`: training and validation loss against the step, written at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from vr_data.io import atomic_write_text, atomic_write_with

METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
LOSS_PLOT = "loss.png"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of `RUN_DIR/metrics.jsonl` (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / METRICS
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


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


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, progress: str = "auto",
                 tensorboard: bool = True, resume_step: int | None = None):
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
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("stage {task.fields[stage]}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=resume_step or 0,
                                                 stage="-", status="")

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

    def progress(self, step: int, stage: str, loss: float, lr: float, examples_per_s: float,
                 data_wait: float, eta_seconds: float) -> None:
        """The progress line: a rich bar on a terminal, else a plain line (and train.log)."""
        if not self.enabled:
            return
        status = f"loss {loss:.5f}  lr {lr:.2e}  {examples_per_s:.1f} ex/s  data wait {100 * data_wait:.1f}%"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stage=stage, status=status)
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stage {stage} step {step}/{self.total_steps} {status}\n")
            self._log.flush()
        else:
            self.line(f"stage {stage} step {step}/{self.total_steps}  {status}  eta {format_seconds(eta_seconds)}")

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
