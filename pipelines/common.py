"""Shared CLI plumbing: one-line errors and exit codes, rich console and progress (plain lines
when stdout is not a terminal), JSON results, dask executor set-up.

Exit codes (docs/cli.md): 0 success; 1 damage found (`verify`, `verify-manifest`); 2 a user
error (a bad option, path or file: one line on stderr); 70 an internal error (a bug: the
traceback is printed); 130 interrupted (Ctrl-C: one line saying to rerun the same command).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vr_data.errors import ConfigError, VRDataError

EXIT_OK = 0
EXIT_DAMAGE = 1
EXIT_USER_ERROR = 2
EXIT_BUG = 70          # sysexits.h EX_SOFTWARE: never shared with "damage found"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
SCHEDULER_TIMEOUT_S = 5.0  # joining a dask scheduler: fail fast, naming the address
PROGRESS_INTERVAL_S = 30.0  # plain progress lines (not a terminal): one per interval at most

console = Console(stderr=False)
err_console = Console(stderr=True)


def user_errors(function: Callable) -> Callable:
    """Turn VRDataError into one line on stderr and exit code 2, and Ctrl-C into one line and
    exit code 130 (tracebacks are for bugs)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except VRDataError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: rerun the same command to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def run_app(app: typer.Typer, args: list[str] | None = None) -> None:
    """Run a Typer app as a console script (`args` default: `sys.argv[1:]`); an unexpected
    exception (a bug) prints its traceback and exits 70, so it is never mistaken for `verify`'s
    "damage found" (1)."""
    try:
        app(args=args, standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # outside a command (while parsing): same line as inside one
        err_console.print("interrupted", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        traceback.print_exc()
        err_console.print(f"internal error (a bug, exit code {EXIT_BUG}): please report the traceback above",
                          highlight=False, soft_wrap=True)
        sys.exit(EXIT_BUG)


def version_option(program: str) -> typer.models.OptionInfo:
    """A `--version` option for a Typer callback: prints `PROGRAM VERSION` and exits."""

    def show(value: bool) -> None:
        if value:
            from vr_data import __version__

            typer.echo(f"{program} {__version__}")
            raise typer.Exit(EXIT_OK)

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")


def set_cache_environment(cache_dir: Path | None, cache_gb: float | None) -> None:
    """`--cache-dir`/`--cache-gb` as `VR_CACHE_DIR`/`VR_CACHE_GB`, which `open_store` reads in this
    process and in its loader workers (vr_data.store.cache)."""
    if cache_gb is not None and not cache_gb > 0:
        raise ConfigError(None, f"--cache-gb must be above 0, not {cache_gb:g}")
    if cache_gb is not None and cache_dir is None:
        raise ConfigError(None, "--cache-gb goes with --cache-dir DIR")
    if cache_dir is not None:
        if cache_dir.exists() and not cache_dir.is_dir():
            raise VRDataError(cache_dir, "--cache-dir exists and is not a directory")
        os.environ["VR_CACHE_DIR"] = str(cache_dir)
    if cache_gb is not None:
        os.environ["VR_CACHE_GB"] = str(cache_gb)


def check_workers(workers: int) -> int:
    """`--workers` must be >= 0 (0: in this process); a ConfigError otherwise."""
    if workers < 0:
        raise ConfigError(None, f"--workers must be >= 0 (0 runs in this process), not {workers}")
    return workers


# ------------------------------------------------------------------------------- output


@contextlib.contextmanager
def humans_on_stderr(active: bool) -> Iterator[None]:
    """While `active` (a `--json -` run), tables and progress go to stderr so stdout carries
    only the JSON document."""
    if not active:
        yield
        return
    before = console.stderr
    console.stderr = True
    try:
        yield
    finally:
        console.stderr = before


def write_json(target: str | Path, record: dict) -> None:
    """Write a JSON result: `-` is standard output, anything else an atomic file write (which
    refuses to replace a device, FIFO or directory)."""
    from vr_data.io import STDOUT, write_output

    write_output(target, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    if str(target) == STDOUT:
        return
    console.print(f"wrote {target}", highlight=False)


def parse_manifest_spec(spec: str, root: Path | None = None) -> tuple[Path, Path | None]:
    """`M.jsonl` or `M.jsonl=ROOT` -> (path, root); `--root` applies when no `=ROOT` is given."""
    from vr_data.catalog.manifest import split_manifest_spec

    path, spec_root = split_manifest_spec(spec)
    return path, spec_root if spec_root is not None else root


# ------------------------------------------------------------------------------- progress


def progress(unit: str = "items", *, bar_width: int | None = 40, elapsed: bool = True) -> Progress | "PlainProgress":
    """A progress display; `unit` names what it counts (items, audio-h, min...).

    On a terminal, a rich progress bar (`bar_width` columns of bar, the elapsed time unless
    `elapsed=False`: narrow both to fit 80 columns). Otherwise (nohup, Slurm, a pipe) a rich bar
    would print nothing until the end, so plain lines are printed instead: one when a task
    starts, then at most one per `VR_PROGRESS_INTERVAL` seconds (default 30), and one when it
    finishes. `VR_PROGRESS=0` switches progress off when not on a terminal.
    """
    if not console.is_terminal:
        interval = float(os.environ.get("VR_PROGRESS_INTERVAL", PROGRESS_INTERVAL_S))
        return PlainProgress(unit, interval, enabled=os.environ.get("VR_PROGRESS", "1") != "0")
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=bar_width),
        MofNCompleteColumn() if unit == "items" else TextColumn("{task.completed:.2f}/{task.total:.2f} " + unit),
        TextColumn("{task.fields[rate]}"),
    ]
    columns += [TimeElapsedColumn()] if elapsed else []
    return Progress(*columns, TimeRemainingColumn(), console=console, transient=False)


class PlainProgress:
    """The part of rich's `Progress` interface the commands use, printing plain lines:
    `description: 12/40 items (30%), 0.21 h, 0:01:05 elapsed, about 0:02:31 left`."""

    def __init__(self, unit: str, interval: float, enabled: bool = True):
        self.unit = unit
        self.interval = interval
        self.enabled = enabled
        self._tasks: dict[int, dict] = {}

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for task_id, task in self._tasks.items():
                if not task["finished"]:
                    self._print(task_id)

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = {"description": description, "total": total, "completed": 0.0,
                                "start": time.monotonic(), "printed": None, "finished": False,
                                "rate": fields.get("rate", "")}
        return task_id

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, **fields) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if "rate" in fields:
            task["rate"] = fields["rate"]
        now = time.monotonic()
        done = task["total"] is not None and task["total"] > 0 and task["completed"] >= task["total"] - 1e-9
        if done and not task["finished"]:
            task["finished"] = True
            self._print(task_id)
        elif not done and (task["printed"] is None or now - task["printed"] >= self.interval):
            self._print(task_id)

    def _print(self, task_id: int) -> None:
        task = self._tasks[task_id]
        task["printed"] = time.monotonic()
        if not self.enabled:
            return
        console.print(self.line(task_id), highlight=False, soft_wrap=True, markup=False)

    def line(self, task_id: int) -> str:
        task = self._tasks[task_id]
        completed, total = task["completed"], task["total"]
        number = (lambda v: f"{int(v)}") if self.unit == "items" else (lambda v: f"{v:.2f}")
        text = f"{task['description']}: {number(completed)}"
        if total:
            text += f"/{number(total)} {self.unit} ({100 * min(completed / total, 1):.0f}%)"
        else:
            text += f" {self.unit}"
        if task["rate"]:
            text += f", {task['rate']}"
        elapsed = time.monotonic() - task["start"]
        text += f", {_clock(elapsed)} elapsed"
        if total and 0 < completed < total:
            text += f", about {_clock(elapsed * (total - completed) / completed)} left"
        return text


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------- dask


@contextlib.contextmanager
def dask_executor(workers: int, scheduler: str | None) -> Iterator[Executor | None]:
    """A concurrent.futures Executor backed by dask.

    `scheduler` joins an existing cluster (failing within `SCHEDULER_TIMEOUT_S` seconds, naming
    the address, when it cannot be reached); otherwise `workers` > 0 starts a LocalCluster of
    that many single-threaded worker processes; `workers == 0` runs in this process (no dask).
    """
    check_workers(workers)
    if scheduler is None and workers <= 0:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, TypeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise VRDataError(scheduler, f"cannot reach the dask scheduler within {SCHEDULER_TIMEOUT_S:g} s "
                                         f"({reason[:160]})") from None
        cluster = None
    else:
        # dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to workers, which also switches off
        # glibc's adaptive mmap threshold: every array over 128 KiB is then mmap'd and
        # page-faulted afresh. Our tasks allocate and free tens of MB per track; measured here,
        # that made every build stage about 2x slower on a worker than in-process.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
                _sigint_ignored():
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=40, memory_limit=0,
            )
        client = Client(cluster)
    failed = True
    executor = client.get_executor(pure=False)
    try:
        yield executor
        failed = False
    finally:
        if failed:
            # Ctrl-C or an error: closing the client under running tasks makes dask and tornado
            # log a traceback per pending future (66 lines for one Ctrl-C), which say nothing
            # more than the one line the command prints.
            # dask's logging config gives sub-loggers (tornado.application...) their own levels.
            for name in [*logging.root.manager.loggerDict, "distributed", "tornado"]:
                if name.split(".")[0] in ("distributed", "tornado"):
                    logging.getLogger(name).setLevel(logging.CRITICAL + 1)
            executor.shutdown(wait=False)
        client.close()
        if cluster is not None:
            if failed:
                _kill_workers(cluster)
            cluster.close()


def _kill_workers(cluster) -> None:
    """SIGKILL a local cluster's worker processes: after Ctrl-C there is nothing to save (every
    task's output is atomic and rerun-safe), and a worker busy with a long track would otherwise
    hold the shutdown, then log heartbeat failures."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        process = getattr(getattr(nanny, "process", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes start: they inherit the disposition, and Python
    keeps an ignored SIGINT ignored, so Ctrl-C reaches only this process, which stops the
    cluster and prints one line (instead of 66 lines of worker tracebacks)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
