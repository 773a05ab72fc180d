"""Stopping a run on request: SIGTERM (a cluster's preemption notice) or SIGINT (Ctrl-C).

The first signal only raises a flag; the loop reads it at the next step boundary, where every
rank agrees on it (`agree`), saves a checkpoint, writes the interruption to `train.log` and raises
`TrainingInterrupted` (`vrtrain run` exits with `EXIT_PREEMPTED`, 75). A second signal stops at
once, without a checkpoint (`vrtrain run` exits 130 for SIGINT, 143 for SIGTERM). Loader workers
ignore Ctrl-C, and SIGTERM until their loader closes (`vr_data.mixer.loader`): the main process
decides when they stop.
"""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75   # sysexits.h EX_TEMPFAIL: stopped on request, checkpoint saved; resume later
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal. `saved`: a checkpoint of the last step was written first
    (the first signal); False after a second signal, which stops at once. `exit_code` is what
    `vrtrain run` exits with."""

    def __init__(self, message: str, signal_name: str, saved: bool):
        super().__init__(message)
        self.message = message
        self.signal_name = signal_name
        self.saved = saved
        number = getattr(signal, signal_name, signal.SIGINT)
        self.exit_code = EXIT_PREEMPTED if saved else 128 + int(number)

    def __str__(self) -> str:
        return self.message


def resume_command(run_dir: Path, world_size: int) -> str:
    """The exact command that continues `run_dir` (under torchrun: the same number of processes)."""
    if world_size > 1:
        return f"torchrun --nproc-per-node {world_size} -m pipelines.vrtrain run --resume {shlex.quote(str(run_dir))}"
    return f"vrtrain run --resume {shlex.quote(str(run_dir))}"


class StopRequests:
    """A context that turns SIGTERM and SIGINT into a stop request (`received`: the first
    signal's name, or None); a second signal raises `TrainingInterrupted` wherever the run is
    (Python runs the handler between bytecodes: after the torch operation in progress).
    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, run_dir: Path, world_size: int):
        self.received: str | None = None
        self.run = None            # the loop's `Run` once set up: its `last_checkpoint` goes in the message
        self._run_dir = run_dir
        self._world_size = world_size
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.received is None:
            self.received = name
            return
        self._restore()   # a third signal gets the default action
        last = getattr(self.run, "last_checkpoint", None)
        raise TrainingInterrupted(
            f"interrupted again ({name}): stopped at once without a checkpoint; "
            + (f"the last checkpoint is {last}; resume with: {resume_command(self._run_dir, self._world_size)}"
               if last is not None else "no checkpoint was saved yet"), name, saved=False)


def agree(flags: tuple[bool, ...], world_size: int, device: torch.device) -> tuple[bool, ...]:
    """Each flag is True on every rank if it is True on any (one small all-reduce per step)."""
    if world_size == 1:
        return flags
    values = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(value) for value in values.tolist())
