"""Shared CLI plumbing: one-line errors, rich console and progress, dask executor set-up."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor

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

from vr_data.errors import VRDataError

console = Console(stderr=False)
err_console = Console(stderr=True)


def user_errors(function: Callable) -> Callable:
    """Turn VRDataError into one line on stderr and exit code 2 (tracebacks are for bugs)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except VRDataError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def progress(unit: str = "items") -> Progress:
    """A rich progress bar; `unit` names what the bar counts (files, audio-hours...)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if unit == "items" else TextColumn("{task.completed:.2f}/{task.total:.2f} " + unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("VR_PROGRESS", "1") == "0",
    )


@contextlib.contextmanager
def dask_executor(workers: int, scheduler: str | None) -> Iterator[Executor | None]:
    """A concurrent.futures Executor backed by dask.

    `scheduler` joins an existing cluster; otherwise `workers` > 0 starts a LocalCluster of that
    many single-threaded worker processes; `workers == 0` runs in this process (no dask).
    """
    if scheduler is None and workers <= 0:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        client = Client(scheduler)
        cluster = None
    else:
        # dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to workers, which also switches off
        # glibc's adaptive mmap threshold: every array over 128 KiB is then mmap'd and
        # page-faulted afresh. Our tasks allocate and free tens of MB per track; measured here,
        # that made every build stage about 2x slower on a worker than in-process.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=40, memory_limit=0,
            )
        client = Client(cluster)
    try:
        yield client.get_executor(pure=False)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))

