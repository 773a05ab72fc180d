"""Model checkpoints: `model.safetensors` + `config.json` in one directory, never pickles.

`config.json` holds the model config (`FramePrimerConfig.to_dict()`), the parameter count and
whatever JSON the caller adds (`extra`: step, metrics, data store ids...). Each file is written
to a temporary name in the same directory and renamed, weights first and `config.json` last,
so a killed job leaves either the old checkpoint or the new one, and a directory with a
`config.json` always has its weights. Other files in the directory (an optimizer state, say)
are left alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vr_data.errors import VRDataError
from vr_model.config import FramePrimerConfig
from vr_model.unet import FramePrimerUNet

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "vr_model.frame_primer/1"


def _replace_atomically(path: Path, write) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path_dir: str | Path,
    model: FramePrimerUNet,
    config: FramePrimerConfig | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` and `config.json` into `path_dir` (created if missing).

    `config` defaults to `model.config`; `extra_json` must be JSON-serialisable. Returns the
    directory. A DDP/compiled wrapper is unwrapped by the caller (pass the bare model).
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
    text = json.dumps(document, indent=2, sort_keys=True)  # fail on bad extra_json before touching files
    # safetensors wants contiguous tensors that own their storage.
    weights = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    _replace_atomically(directory / WEIGHTS, lambda temporary: save_file(weights, temporary, metadata={"format": FORMAT}))
    _replace_atomically(directory / CONFIG, lambda temporary: Path(temporary).write_text(text + "\n"))
    return directory


def read_checkpoint_json(path_dir: str | Path) -> dict[str, Any]:
    """The `config.json` document of a checkpoint directory (format, model, parameters, extra)."""
    path = Path(path_dir) / CONFIG
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise VRDataError(path_dir, f"not a checkpoint directory (no {CONFIG})") from None
    except (OSError, json.JSONDecodeError) as error:
        raise VRDataError(path, f"unreadable checkpoint config: {error}") from None
    if document.get("format") != FORMAT:
        raise VRDataError(path, f"checkpoint format {document.get('format')!r} is not {FORMAT!r}")
    return document


def load_model(path_dir: str | Path, device: str | torch.device = "cpu") -> FramePrimerUNet:
    """Rebuild the model from `config.json` and load `model.safetensors` (strict; no unpickling).

    The model is returned in eval mode on `device`.
    """
    document = read_checkpoint_json(path_dir)
    config = FramePrimerConfig.from_dict(document["model"])
    weights_path = Path(path_dir) / WEIGHTS
    try:
        weights = load_file(weights_path, device=str(device))
    except (FileNotFoundError, SafetensorError, OSError) as error:
        raise VRDataError(weights_path, f"unreadable checkpoint weights: {error}") from None
    with torch.device("meta"):
        model = FramePrimerUNet(config)  # no random init: every tensor comes from the file
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        raise VRDataError(weights_path, f"weights do not match the config: {error}") from None
    return model.to(device).eval()
