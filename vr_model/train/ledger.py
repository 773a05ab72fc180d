"""`examples.jsonl`: the ledger of what a run trained on (`log.examples = true`).

One JSON line per optimizer step, written by rank 0 after the step:

    {"step": 12, "epoch": 0, "indices": [44, 45, 46, 47],
     "examples": [{"index": 44, "kind": "augmented", "tracks": ["beat_01", "take_02"],
                   "sources": ["instrumental", "vocal"], "frames": [96, 17], "gains": [0.71, -0.71],
                   "valid": 32, "swap": [false, true], "mono": false, "instrumental_only": false}, ...]}

`indices` are the step's example indices in their epoch (all ranks and micro-batches, sorted);
each example's record is `MixerBase.example_record` (the WebDataset backend leaves `frames` and
`sources` empty: a stream does not say where in its track a crop starts). Since an example is a
pure function of (seed, epoch, index), `(epoch, indices)` alone identifies what a step saw, at
any number of ranks or workers.

Lines are appended and flushed after every step (a killed process loses none: they are in the
operating system's hands) and fsync'ed before every checkpoint is saved (`sync`), so a machine
that goes down loses no line up to the checkpoint it resumes from (fsync per step cost 7 ms of
the 9 ms a step's line took: docs/performance.md). On resume, lines past the checkpoint's step
(and a torn last line) are dropped, rewritten through `vr_data.io`, as `metrics.jsonl` is, so a
killed and resumed run's ledger holds every step once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist

from vr_data.errors import VRDataError
from vr_data.io import atomic_write_lines, not_regular_reason, read_jsonl

EXAMPLES = "examples.jsonl"


def read_ledger(run_dir: str | Path) -> list[dict]:
    """The step records of `RUN_DIR/examples.jsonl` (a torn last line, from a kill, is skipped)."""
    return read_jsonl(Path(run_dir) / EXAMPLES)


class ExampleLedger:
    """Appends one record per optimizer step to `RUN_DIR/examples.jsonl` (rank 0; a no-op
    elsewhere and when disabled). `steps_done`: the step the run starts after (its checkpoint's);
    records past it are dropped first. `sync()` before each checkpoint makes the lines durable."""

    def __init__(self, run_dir: Path, enabled: bool, writer: bool, steps_done: int = 0):
        self.enabled = enabled
        self._file = None
        if not (enabled and writer):
            return
        path = Path(run_dir) / EXAMPLES
        if os.path.lexists(path):
            reason = "a symbolic link" if path.is_symlink() else not_regular_reason(path)
            if reason:
                raise VRDataError(path, f"cannot write the example ledger here: {reason}")
            atomic_write_lines(path, [r for r in read_ledger(run_dir) if int(r.get("step", 0)) <= steps_done])
        self._file = open(path, "a")

    def add(self, step: int, epoch: int, records: list[dict], world_size: int) -> None:
        """Record step `step`: `records` are this rank's examples of the step (every rank calls
        this; the records are gathered to rank 0)."""
        if not self.enabled:
            return
        if world_size > 1:
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, records)
            records = [record for rank_records in gathered for record in rank_records]
        if self._file is None:
            return
        records = sorted(records, key=lambda record: record["index"])
        line = {"step": step, "epoch": epoch, "indices": [r["index"] for r in records], "examples": records}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def sync(self) -> None:
        """fsync the lines written so far (called before a checkpoint is saved)."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
