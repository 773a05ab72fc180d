"""Training checkpoints on disk: `RUN_DIR/checkpoints/step-NNNNNNNN/`, written whole or not at all.

A training checkpoint is a model checkpoint (`vr_model.network.checkpoint`: `model.safetensors`,
`ema.safetensors` when an EMA is kept, `config.json` with the run's records in `extra`) plus
what an exact resume needs:

- `trainer.pt`: the optimizer and grad-scaler state dicts and every rank's torch RNG states
  (CPU and CUDA), loaded with `torch.load(weights_only=True)` - tensors and plain containers only;
- `state.json`: step, stage, every rank's loader position (`MixerLoader.state_dict()`), the
  counters (examples, non-finite steps, best validation loss) and numpy's and Python's global
  RNG states.

Everything is written into a dot-named temporary directory beside the final one, flushed to
disk, and renamed: a killed save leaves a dot-directory that is ignored (and removed by the next
run), never a `step-*` directory without all its files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vr_data.errors import VRDataError
from vr_model.network.checkpoint import BEST, STEP_PREFIX, list_checkpoints, save_checkpoint
from vr_model.network.unet import FramePrimerUNet

TRAINER_STATE = "trainer.pt"
STATE_JSON = "state.json"


@dataclass
class TrainingState:
    """What a resumed run restores beyond the weights. `loaders` and `rng` hold one entry per rank."""

    step: int
    stage: int
    loaders: list[dict]
    optimizer: dict
    scaler: dict
    rng: list[dict]
    counters: dict = field(default_factory=dict)
    host_rng: dict = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch RNG states (CPU, and the current CUDA device's when on CUDA)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def host_rng_state() -> dict[str, Any]:
    """numpy's and Python's global RNG states as JSON (the loop draws from neither; saved so a
    library that does is restored too)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def set_host_rng_state(state: dict[str, Any]) -> None:
    if "numpy" in state:
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, np.uint32), position, has_gauss, cached))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_training_checkpoint(checkpoints_dir: Path, model: FramePrimerUNet, ema_state: dict | None,
                             extra: dict, state: TrainingState) -> Path:
    """Write `checkpoints_dir/step-NNNNNNNN/` atomically (temporary directory, then rename).

    `model` is the bare model (not a DDP or compiled wrapper); `extra` goes into `config.json`.
    An existing directory of the same step (a run resumed from an earlier checkpoint that
    reaches it again) is replaced. Returns the checkpoint directory.
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(state.step)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=checkpoints_dir))
    try:
        save_checkpoint(temporary, model, extra_json=extra, ema_state=ema_state)
        torch.save({"optimizer": state.optimizer, "scaler": state.scaler, "rng": state.rng}, temporary / TRAINER_STATE)
        document = {"step": state.step, "stage": state.stage, "loaders": state.loaders,
                    "counters": state.counters, "host_rng": state.host_rng}
        (temporary / STATE_JSON).write_text(json.dumps(document, indent=1) + "\n")
        for entry in temporary.iterdir():
            _fsync(entry)
        if final.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=checkpoints_dir))
            os.replace(final, stale / final.name)
            os.rename(temporary, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(temporary, final)
        _fsync(checkpoints_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def load_training_state(checkpoint_dir: Path) -> TrainingState:
    """The resume state of a training checkpoint (no unpickling: `weights_only=True`)."""
    try:
        tensors = torch.load(checkpoint_dir / TRAINER_STATE, map_location="cpu", weights_only=True)
        document = json.loads((checkpoint_dir / STATE_JSON).read_text())
    except FileNotFoundError as error:
        raise VRDataError(checkpoint_dir, f"not a training checkpoint (no {Path(error.filename).name})") from None
    except (OSError, RuntimeError, ValueError) as error:
        raise VRDataError(checkpoint_dir, f"unreadable training state: {error}") from None
    return TrainingState(step=int(document["step"]), stage=int(document["stage"]), loaders=document["loaders"],
                         optimizer=tensors["optimizer"], scaler=tensors["scaler"], rng=tensors["rng"],
                         counters=document.get("counters", {}), host_rng=document.get("host_rng", {}))


def remove_unfinished(checkpoints_dir: Path) -> None:
    """Delete dot-directories left by saves that were killed midway."""
    if checkpoints_dir.is_dir():
        for entry in checkpoints_dir.iterdir():
            if entry.name.startswith(f".{STEP_PREFIX}") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def write_best(checkpoints_dir: Path, checkpoint: Path, step: int, valid_loss: float) -> None:
    """Point `checkpoints/best` at `checkpoint` (a small JSON file, replaced atomically)."""
    text = json.dumps({"checkpoint": checkpoint.name, "step": step, "valid_loss": valid_loss}) + "\n"
    descriptor, temporary = tempfile.mkstemp(prefix=f".{BEST}.", suffix=".tmp", dir=checkpoints_dir)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, checkpoints_dir / BEST)


def read_best(checkpoints_dir: Path) -> dict | None:
    try:
        return json.loads((checkpoints_dir / BEST).read_text())
    except (OSError, ValueError):
        return None


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Delete all but the last `keep` checkpoints, sparing the one `best` points at."""
    best = read_best(checkpoints_dir)
    spared = best["checkpoint"] if best else None
    removed = []
    for directory in list_checkpoints(checkpoints_dir)[:-keep]:
        if directory.name != spared:
            # Renamed to a dot-name first, so a kill mid-delete leaves nothing that looks finished.
            doomed = directory.with_name(f".{directory.name}.deleting")
            os.rename(directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(directory)
    return removed
