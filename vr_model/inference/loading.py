"""A trained network ready to apply: a checkpoint's model, normalisation and STFT, on a device.

`load_checkpoint_model` is what separate, eval and export load; `separator_from_checkpoint` wraps
it into a `Separator`. Devices are named as for training: `auto` (CUDA when torch sees one, else
the CPU), `cpu`, `cuda` or `cuda:N`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vr_data.dsp import StftConfig
from vr_data.errors import VRDataError
from vr_model.inference.masking import TorchMaskNetwork
from vr_model.inference.separate import SeparationOptions, Separator


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when torch sees a CUDA device, else `cpu`; refuses an unknown name or a
    CUDA device torch does not see."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise VRDataError(None, f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VRDataError(None, f"--device {device}: no CUDA device is available to torch here")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise VRDataError(None, f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_checkpoint_model(path: str | Path, device: str = "cpu", weights: str | None = None):
    """`(model, normalisation, stft_config)` of a checkpoint, the model in eval mode on `device`.

    `path`: a checkpoint directory, or a run directory (its best checkpoint). `weights`: "ema"
    (the default: the moving average where the checkpoint keeps one) or "raw". The STFT is the
    store's, recorded by the trainer in `extra.stft` (the default `StftConfig` otherwise).
    """
    from vr_model.network.checkpoint import (
        checkpoint_normalisation, load_model, read_checkpoint_json, resolve_checkpoint,
    )

    device = resolve_device(device)
    directory = resolve_checkpoint(path)
    extra = read_checkpoint_json(directory).get("extra", {})
    stft_config = StftConfig.from_dict(extra["stft"]) if "stft" in extra else StftConfig()
    model = load_model(directory, device, weights=weights or "ema")
    return model, checkpoint_normalisation(directory), stft_config


def separator_from_checkpoint(path: str | Path, device: str = "auto", weights: str | None = None,
                              options: SeparationOptions = SeparationOptions()) -> Separator:
    """A `Separator` for a checkpoint: its weights, the normalisation and STFT it was trained with."""
    device = resolve_device(device)
    model, normalisation, stft_config = load_checkpoint_model(path, device, weights)
    return Separator(TorchMaskNetwork(model, device), normalisation, stft_config, options)
