"""Model checkpoints: `model.safetensors` + `config.json` in one directory, never pickles.

`config.json` holds the model config (`FramePrimerConfig.to_dict()`), the parameter count,
whatever JSON the caller adds (`extra`: step, metrics, data store ids...) and `files`: the
sha256 of every other file of the checkpoint (`"model.safetensors": "sha256:..."`). Every
load checks the digest of what it reads (`load_weights`, `verify_file`), so a damaged file is
a one-line error naming it, never weights silently used. Each file is written through
`vr_data.io.atomic_write_with` (a temporary name in the same directory, renamed), weights
first and `config.json` last, so a killed job leaves either the old checkpoint or the new
one, and a directory with a `config.json` always has its weights. Other files in the directory (an optimizer state, say)
are left alone. An exponential moving average of the weights, when kept, is a second
safetensors file, `ema.safetensors`, with the same tensor names.

A training run (`vrtrain run`, `docs/training.md`) keeps its checkpoints as
`RUN_DIR/checkpoints/step-NNNNNNNN/` (each renamed into place whole, so a listed one is
complete) and a pointer file `RUN_DIR/checkpoints/best` naming the best by validation loss.
`resolve_checkpoint` turns a run directory into one of those; `load_model` and
`checkpoint_normalisation` accept either. The trainer records in `extra`: `normalisation`
(`InputNormalisation.to_dict()`), `stft`, `store_id`, `mixer`, `train`, `step`, `stage` and
`objective`.
"""

from __future__ import annotations

import errno
import os
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vr_data.errors import VRDataError
from vr_data.io import atomic_write_text, atomic_write_with
from vr_model.network.config import FramePrimerConfig
from vr_data.mixer.normalisation import InputNormalisation
from vr_model.network.unet import FramePrimerUNet

WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
CONFIG = "config.json"
CHECKPOINTS = "checkpoints"        # under a run directory
BEST = "best"                      # pointer file in RUN_DIR/checkpoints: {"checkpoint": "step-...", ...}
STEP_PREFIX = "step-"
FORMAT = "vr_model.frame_primer/1"
DIGESTS = "files"                  # config.json: {file name: "sha256:<hex>"} of the checkpoint's other files


def file_digest(path: str | Path) -> str:
    """`"sha256:<hex>"` of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def verify_file(path: str | Path, document: dict | None = None) -> None:
    """Check `path` against the digest its checkpoint's `config.json` records for it; a
    mismatch or a missing file is a one-line VRDataError naming the file. A checkpoint written
    before digests were recorded (no `files`) is not checked."""
    path = Path(path)
    if document is None:
        document = read_checkpoint_json(path.parent)
    expected = document.get(DIGESTS, {}).get(path.name)
    if expected is None:
        if DIGESTS in document:
            raise VRDataError(path, f"damaged checkpoint: {CONFIG} records no digest for {path.name}")
        return
    try:
        actual = file_digest(path)
    except FileNotFoundError:
        raise VRDataError(path, "damaged checkpoint: the file is missing") from None
    except OSError as error:
        raise VRDataError(path, f"unreadable checkpoint file: {error.strerror or error}") from None
    if actual != expected:
        raise VRDataError(path, f"damaged checkpoint: its content does not match the digest in {CONFIG} "
                                f"({actual[:19]}... is not {expected[:19]}...)")


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors `save_file` through the atomic writer; a full disk is an OSError (ENOSPC),
    which `atomic_write_with` turns into a one-line error."""
    def write(temporary: Path) -> None:
        try:
            save_file(tensors, str(temporary), metadata={"format": FORMAT})
        except SafetensorError as error:
            code = errno.ENOSPC if "code: 28" in str(error) else errno.EIO
            raise OSError(code, os.strerror(code)) from None

    atomic_write_with(path, write)


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of a state dict's tensors (what a safetensors file of them takes, headers aside)."""
    return sum(t.numel() * t.element_size() for t in tensors.values() if isinstance(t, torch.Tensor))


def save_checkpoint(
    path_dir: str | Path,
    model: FramePrimerUNet,
    config: FramePrimerConfig | None = None,
    extra_json: dict[str, Any] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    digest_files: tuple[str, ...] = (),
) -> Path:
    """Write `model.safetensors` (and `ema.safetensors` when `ema_state`, a state dict with the
    model's names, is given) and `config.json` into `path_dir` (created if missing).

    `config` defaults to `model.config`; `extra_json` must be JSON-serialisable. `config.json`
    records the digest of every file written here and of `digest_files` (files the caller
    wrote into the directory first, e.g. a trainer state). Returns the directory. A
    DDP/compiled wrapper is unwrapped by the caller (pass the bare model).
    """
    directory = Path(path_dir)
    directory.mkdir(parents=True, exist_ok=True)
    config = config or model.config
    document = {
        "format": FORMAT,
        "model": config.to_dict(),
        "parameters": model.num_parameters(),
        "extra": extra_json or {},
    }
    json.dumps(document)  # fail on bad extra_json before touching files
    # safetensors wants contiguous tensors that own their storage.
    weights = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    written = [WEIGHTS]
    _save_tensors(weights, directory / WEIGHTS)
    if ema_state is not None:
        if set(ema_state) != set(weights):
            raise ValueError("ema_state must have exactly the model's state_dict names")
        averaged = {name: tensor.detach().to("cpu").contiguous() for name, tensor in ema_state.items()}
        _save_tensors(averaged, directory / EMA_WEIGHTS)
        written.append(EMA_WEIGHTS)
    document[DIGESTS] = {name: file_digest(directory / name) for name in (*written, *digest_files)}
    atomic_write_text(directory / CONFIG, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint_json(path_dir: str | Path) -> dict[str, Any]:
    """The `config.json` document of a checkpoint directory (format, model, parameters, extra)."""
    path = Path(path_dir) / CONFIG
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise VRDataError(path_dir, f"not a checkpoint directory (no {CONFIG})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VRDataError(path, f"unreadable checkpoint config: {error}") from None
    if not isinstance(document, dict):
        raise VRDataError(path, "damaged checkpoint config: not a JSON object")
    if document.get("format") != FORMAT:
        raise VRDataError(path, f"checkpoint format {document.get('format')!r} is not {FORMAT!r}")
    for key, kind in (("model", dict), ("extra", dict), ("parameters", int)):
        if not isinstance(document.get(key), kind):
            raise VRDataError(path, f"damaged checkpoint config: {key!r} is missing or not a {kind.__name__}")
    files = document.get(DIGESTS, {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise VRDataError(path, f"damaged checkpoint config: {DIGESTS!r} is not a table of digests")
    return document


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint directory `path` means: `path` itself when it holds a `config.json`;
    for a run directory (or its `checkpoints/`), the best by validation (`which="best"`; the
    latest when the run has no validation yet) or the latest (`which="latest"`)."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', not {which!r}")
    path = Path(path)
    if (path / CONFIG).is_file():
        return path
    directory = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    if which == "best" and (directory / BEST).is_file():
        try:
            name = json.loads((directory / BEST).read_text())["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise VRDataError(directory / BEST, f"unreadable best-checkpoint pointer: {error}") from None
        if not (directory / name / CONFIG).is_file():
            raise VRDataError(directory / BEST, f"points at {name}, which is not a checkpoint")
        return directory / name
    steps = list_checkpoints(directory)
    if not steps:
        raise VRDataError(path, "not a checkpoint directory (no config.json), nor a run directory with checkpoints")
    return steps[-1]


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The finished `step-NNNNNNNN` checkpoints of a `RUN_DIR/checkpoints` directory, oldest first.

    Checkpoints are written under a temporary (dot) name and renamed whole, so every name listed
    here is complete; a dot-name left by a killed save is ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        digits = entry.name[len(STEP_PREFIX):]
        if entry.name.startswith(STEP_PREFIX) and digits.isdigit() and (entry / CONFIG).is_file():
            found.append((int(digits), entry))
    return [entry for _, entry in sorted(found)]


def checkpoint_normalisation(path: str | Path) -> InputNormalisation:
    """The input normalisation a checkpoint was trained with (`extra.normalisation`); a
    checkpoint that records none was not made by the trainer and gets the mixer's default."""
    document = read_checkpoint_json(resolve_checkpoint(path))
    record = document.get("extra", {}).get("normalisation")
    if record is None:
        return InputNormalisation()
    try:
        return InputNormalisation.from_dict(record)
    except (KeyError, TypeError, ValueError) as error:
        raise VRDataError(Path(resolve_checkpoint(path)) / CONFIG,
                          f"damaged checkpoint config: extra.normalisation {record!r} ({error})") from None


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors state dict (no unpickling), after checking the file against the digest
    its checkpoint's `config.json` records; damaged or unreadable files are user errors."""
    path = Path(path)
    verify_file(path)
    try:
        return load_file(path, device=str(device))
    except (FileNotFoundError, SafetensorError, OSError) as error:
        raise VRDataError(path, f"unreadable checkpoint weights: {error}") from None


def checkpoint_model_config(directory: Path, document: dict) -> FramePrimerConfig:
    """The model config a checkpoint's `config.json` records; a damaged one is one line."""
    try:
        return FramePrimerConfig.from_dict(document["model"])
    except (VRDataError, TypeError, ValueError) as error:
        raise VRDataError(Path(directory) / CONFIG,
                          f"damaged checkpoint config: model {getattr(error, 'reason', error)}") from None


def load_model(path_dir: str | Path, device: str | torch.device = "cpu", weights: str = "ema") -> FramePrimerUNet:
    """Rebuild the model from `config.json` and load its weights (strict; no unpickling).

    `path_dir`: a checkpoint directory, or a run directory (its best checkpoint, see
    `resolve_checkpoint`). `weights="ema"` loads `ema.safetensors` where the checkpoint has one
    and `model.safetensors` otherwise; `"raw"` always loads `model.safetensors`.
    The model is returned in eval mode on `device`.
    """
    if weights not in ("ema", "raw"):
        raise VRDataError(None, f"weights must be 'ema' or 'raw', not {weights!r}")
    directory = resolve_checkpoint(path_dir)
    document = read_checkpoint_json(directory)
    config = checkpoint_model_config(directory, document)
    weights_path = directory / EMA_WEIGHTS if weights == "ema" and (directory / EMA_WEIGHTS).is_file() else directory / WEIGHTS
    state = load_weights(weights_path, device)
    with torch.device("meta"):
        model = FramePrimerUNet(config)  # no random init: every tensor comes from the file
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise VRDataError(weights_path, f"weights do not match the config: {error}") from None
    return model.to(device).eval()
