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
run), never a `step-*` directory without all its files. `config.json` records the sha256 of
every other file (`trainer.pt` and `state.json` included), and a resume checks them all and
the shape of both state files before it uses anything (`resume_checkpoint`): a damaged
checkpoint is one line naming the file and the newest intact older one, never a silent
fallback. A full disk is refused before the save starts, with the space it needs.

`lock_run_dir` keeps a second `vrtrain run` off a run directory while one works in it
("in use by PID ... on HOST"), as `vrdata build-shards` locks its store.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle  # only for pickle.UnpicklingError: torch.load(weights_only=True) raises it on a refused pickle
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vr_data.errors import VRDataError
from vr_data.io import UNWRITABLE, atomic_write_text, exclusive_lock, replace_directory
from vr_model.network.checkpoint import (
    BEST, CONFIG, STEP_PREFIX, list_checkpoints, read_checkpoint_json, save_checkpoint, tensor_bytes, verify_file,
)
from vr_model.network.unet import FramePrimerUNet

TRAINER_STATE = "trainer.pt"
STATE_JSON = "state.json"
LOCK = ".lock"          # RUN_DIR/.lock while a run works in the directory


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


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def checkpoint_bytes(model: FramePrimerUNet, ema_state: dict | None, state: TrainingState) -> int:
    """About the bytes a training checkpoint takes: weights, EMA, optimizer state (plus 1 MiB
    for the JSON files, the RNG states and safetensors headers)."""
    optimizer = sum(tensor_bytes({str(k): v for k, v in entry.items()})
                    for entry in state.optimizer.get("state", {}).values())
    return tensor_bytes(model.state_dict()) * (2 if ema_state is not None else 1) + optimizer + (1 << 20)


def check_free_space(checkpoints_dir: Path, needed: int) -> None:
    """Refuse a save that cannot fit on the disk, with the space it needs."""
    free = shutil.disk_usage(checkpoints_dir).free
    if free < needed:
        raise VRDataError(checkpoints_dir, f"no space for a checkpoint: it needs about {_mib(needed)}, the disk has "
                                           f"{_mib(free)} free; free some space and resume with --resume",
                          UNWRITABLE)


def _mib(count: int) -> str:
    return f"{count / 2 ** 30:.1f} GiB" if count >= 2 ** 30 else f"{count / 2 ** 20:.1f} MiB"


def save_training_checkpoint(checkpoints_dir: Path, model: FramePrimerUNet, ema_state: dict | None,
                             extra: dict, state: TrainingState) -> Path:
    """Write `checkpoints_dir/step-NNNNNNNN/` atomically (temporary directory, then rename).

    `model` is the bare model (not a DDP or compiled wrapper); `extra` goes into `config.json`.
    An existing directory of the same step (a run resumed from an earlier checkpoint that
    reaches it again) is replaced. Returns the checkpoint directory. A full disk is a one-line
    VRDataError with the space the checkpoint needs (checked first, and again if a write fails).
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    needed = checkpoint_bytes(model, ema_state, state)
    check_free_space(checkpoints_dir, needed)
    final = checkpoint_name(state.step)
    final = checkpoints_dir / final
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=checkpoints_dir))
    os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp makes it 0700: the run's files follow the umask
    try:
        try:
            torch.save({"optimizer": state.optimizer, "scaler": state.scaler, "rng": state.rng},
                       temporary / TRAINER_STATE)
            document = {"step": state.step, "stage": state.stage, "loaders": state.loaders,
                        "counters": state.counters, "host_rng": state.host_rng}
            (temporary / STATE_JSON).write_text(json.dumps(document, indent=1) + "\n")
            save_checkpoint(temporary, model, extra_json=extra, ema_state=ema_state,
                            digest_files=(TRAINER_STATE, STATE_JSON))
        except (OSError, RuntimeError, VRDataError) as error:
            text = str(error).lower()
            if "no space" in text or "os error 28" in text or getattr(error, "errno", None) == 28:
                raise VRDataError(checkpoints_dir, f"disk full while saving {final.name}: a checkpoint needs about "
                                                   f"{_mib(needed)}; free some space and resume with --resume "
                                                   f"(the previous checkpoints are intact)", UNWRITABLE) from None
            raise
        for entry in temporary.iterdir():
            _fsync(entry)
        replace_directory(temporary, final)
        _fsync(checkpoints_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _LoaderPosition(_Strict):
    epoch: int = Field(ge=0)
    batch: int = Field(ge=0)
    config: dict | None = None


class _Counters(_Strict):
    examples: int = Field(0, ge=0)
    nonfinite_steps: int = Field(0, ge=0)
    nonfinite_streak: int = Field(0, ge=0)
    best_valid_loss: float | None = None
    ema_updates: int = Field(0, ge=0)


class _StateDocument(_Strict):
    """The shape `state.json` must have (checked before anything is restored)."""

    step: int = Field(ge=0)
    stage: int = Field(ge=0)
    loaders: list[_LoaderPosition] = Field(min_length=1)
    counters: _Counters = Field(default_factory=_Counters)
    host_rng: dict = Field(default_factory=dict)


class _RngState(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")
    torch: torch.Tensor


class _OptimizerState(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")
    state: dict
    param_groups: list[dict] = Field(min_length=1)


class _TrainerDocument(BaseModel):
    """The shape `trainer.pt` must have."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    optimizer: _OptimizerState
    scaler: dict
    rng: list[_RngState] = Field(min_length=1)


def _shape_error(path: Path, error: ValidationError) -> VRDataError:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(document)"
    return VRDataError(path, f"damaged training state: {key}: {first['msg'][:1].lower()}{first['msg'][1:]}")


def load_training_state(checkpoint_dir: Path) -> TrainingState:
    """The resume state of a training checkpoint, after checking both files against their
    digests and their shapes (no unpickling: `weights_only=True`); anything wrong is one line
    naming the file."""
    checkpoint_dir = Path(checkpoint_dir)
    document = read_checkpoint_json(checkpoint_dir)
    for name in (TRAINER_STATE, STATE_JSON):
        if not (checkpoint_dir / name).is_file():
            raise VRDataError(checkpoint_dir / name, "damaged training checkpoint: the file is missing")
        verify_file(checkpoint_dir / name, document)
    try:
        record = json.loads((checkpoint_dir / STATE_JSON).read_text(encoding="utf-8"))
        state = _StateDocument.model_validate(record)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, ValidationError):
            raise _shape_error(checkpoint_dir / STATE_JSON, error) from None
        raise VRDataError(checkpoint_dir / STATE_JSON, f"unreadable training state: {error}") from None
    try:
        tensors = torch.load(checkpoint_dir / TRAINER_STATE, map_location="cpu", weights_only=True)
        trainer = _TrainerDocument.model_validate(tensors)
    except ValidationError as error:
        raise _shape_error(checkpoint_dir / TRAINER_STATE, error) from None
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VRDataError(checkpoint_dir / TRAINER_STATE, f"refused: not a plain tensor file that loads without "
                                                          f"running code ({reason[:120]})") from None
    return TrainingState(step=state.step, stage=state.stage, loaders=record["loaders"],
                         optimizer=tensors["optimizer"], scaler=tensors["scaler"], rng=tensors["rng"],
                         counters=record.get("counters", {}), host_rng=state.host_rng)


def step_directories(checkpoints_dir: Path) -> list[Path]:
    """Every `step-NNNNNNNN` directory, oldest first, whether complete or not (a dot-named one
    left by a killed save is not listed)."""
    if not checkpoints_dir.is_dir():
        return []
    found = [(int(entry.name[len(STEP_PREFIX):]), entry) for entry in checkpoints_dir.iterdir()
             if entry.name.startswith(STEP_PREFIX) and entry.name[len(STEP_PREFIX):].isdigit()]
    return [entry for _, entry in sorted(found)]


def verify_training_checkpoint(checkpoint_dir: Path) -> TrainingState:
    """Check every file of a training checkpoint (config, digests, state shapes); its state."""
    if not (checkpoint_dir / CONFIG).is_file():
        raise VRDataError(checkpoint_dir / CONFIG, "damaged checkpoint: the file is missing")
    document = read_checkpoint_json(checkpoint_dir)
    for name in document.get("files", {}):
        verify_file(checkpoint_dir / name, document)
    return load_training_state(checkpoint_dir)


def resume_checkpoint(run_dir: Path, checkpoints_dir: Path) -> Path | None:
    """The checkpoint `--resume` continues from: the newest, checked whole. None only when the
    run has no checkpoint directory at all (it starts from step 0). A damaged newest one is a
    one-line VRDataError naming the file and the newest intact older checkpoint, with how to
    resume from it: never a silent fallback."""
    found = step_directories(checkpoints_dir)
    if not found:
        return None
    try:
        verify_training_checkpoint(found[-1])
        return found[-1]
    except VRDataError as damage:
        for older in reversed(found[:-1]):
            try:
                verify_training_checkpoint(older)
            except VRDataError:
                continue
            newer = " ".join(str(path) for path in found[found.index(older) + 1:])
            raise VRDataError(damage.path, f"{damage.reason}; the newest intact checkpoint is {older.name}: to resume "
                                           f"from it, move the newer ones away (mkdir -p {run_dir}.damaged && mv "
                                           f"{newer} {run_dir}.damaged/) and rerun `vrtrain run --resume {run_dir}`"
                              ) from None
        raise VRDataError(damage.path, f"{damage.reason}; no intact older checkpoint in {checkpoints_dir}") from None


@contextlib.contextmanager
def lock_run_dir(run_dir: Path, rank: int = 0) -> Iterator[None]:
    """Hold `RUN_DIR/.lock` while a run works in `run_dir` (rank 0 only; the other ranks of a
    torchrun job share its lock). A second run gets one line ("in use by PID ... on HOST"). A
    directory this call created is removed again if the run leaves nothing in it (a refusal
    before the first write leaves no half-made run directory). `--out` naming an existing file
    is refused."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise VRDataError(run_dir, "exists and is not a directory: --out names the run directory to create",
                          UNWRITABLE)
    if rank != 0:
        yield
        return
    created = not run_dir.exists()
    try:
        with exclusive_lock(run_dir / LOCK, "vrtrain run", subject=run_dir):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def remove_unfinished(checkpoints_dir: Path) -> None:
    """Delete dot-directories left by saves that were killed midway."""
    if checkpoints_dir.is_dir():
        for entry in checkpoints_dir.iterdir():
            if entry.name.startswith(f".{STEP_PREFIX}") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def write_best(checkpoints_dir: Path, checkpoint: Path, step: int, valid_loss: float) -> None:
    """Point `checkpoints/best` at `checkpoint` (a small JSON file, replaced atomically)."""
    atomic_write_text(checkpoints_dir / BEST,
                      json.dumps({"checkpoint": checkpoint.name, "step": step, "valid_loss": valid_loss}) + "\n")


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


def resumed_config(run_dir: Path, extended=None, config_name: str = "config.toml"):
    """The config a resumed run continues with: its own `config_name`, or `extended` (the same
    with more steps on the last stage or appended stages; anything else is refused naming the
    key, `config.check_extension`)."""
    from vr_model.train.config import check_extension, load_config

    path = Path(run_dir) / config_name
    if not path.is_file():
        raise VRDataError(run_dir, f"nothing to resume: no {config_name}")
    saved = load_config(path)
    if extended is None:
        return saved
    check_extension(saved, extended)
    return extended
