"""ONNX export of the mask network, and separation through onnxruntime.

The STFT, the input normalisation and the cross-fading stay outside the network, so the export
is the plain mask network: `magnitude (batch, channels, bins, frames)` float32, already
normalised, in; `mask` of the same shape out. The batch and frames axes are dynamic; frames
may be 1 to `max_frames` (the relative position embeddings cover no more). The checkpoint's
normalisation, STFT and model config travel in the ONNX file's metadata, so `vrtrain separate
--onnx` needs nothing else.

The legacy TorchScript exporter is used: the dynamo exporter needs onnxscript, and the trace
of this model is static apart from the two dynamic axes (checked by `tests/test_export.py`
at several frame counts against torch).
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from vr_data.dsp import StftConfig
from vr_data.errors import VRDataError
from vr_data.mixer.normalisation import InputNormalisation

OPSET = 17
FORMAT = "vr_model.frame_primer.onnx/1"
INPUT, OUTPUT = "magnitude", "mask"


def export_onnx(model: torch.nn.Module, path: str | Path, normalisation: InputNormalisation,
                stft_config: StftConfig, trace_frames: int = 32) -> bytes:
    """Write `model`'s mask network with its contract as metadata to `path` and return the
    file's bytes. `path` `-` streams them to standard output; any other path is written through
    `vr_data.io` (atomically; a device, a FIFO, a folder or a symlink to one is refused)."""
    import onnx

    from vr_data.io import check_writable, write_output

    config = model.config
    if config.head != "mask":
        raise VRDataError(None, f"this model's head is {config.head!r}; only mask models are exported")
    if stft_config.bins != config.bins + 1:
        raise VRDataError(None, f"the STFT gives {stft_config.bins} bins, the model takes {config.bins + 1}")
    if str(path) != "-":
        check_writable(path)   # before the export's minutes of tracing
    frames = max(2, min(trace_frames, config.max_frames))
    device = next(model.parameters()).device
    example = torch.rand(1, config.in_channels, config.bins + 1, frames, device=device)
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="vr-export-") as folder:
            traced = Path(folder) / "model.onnx"
            with warnings.catch_warnings(), torch.no_grad(), _plain_frame_norms(model):
                # Tracer warnings name the shape checks in forward(), which the trace freezes as
                # constants; the dynamic axes are verified by the parity test instead.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (example,), str(traced), input_names=[INPUT], output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch", 3: "frames"}, OUTPUT: {0: "batch", 3: "frames"}},
                    opset_version=OPSET, dynamo=False, do_constant_folding=True,
                )
            document = onnx.load(str(traced))
    finally:
        model.train(was_training)
    metadata = {
        "format": FORMAT,
        "model": json.dumps(config.to_dict(), sort_keys=True),
        "normalisation": json.dumps(normalisation.to_dict(), sort_keys=True),
        "stft": json.dumps(stft_config.to_dict(), sort_keys=True),
    }
    for key, value in metadata.items():
        entry = document.metadata_props.add()
        entry.key, entry.value = key, value
    data = document.SerializeToString()
    write_output(path, data)
    return data


@contextlib.contextmanager
def _plain_frame_norms(model: torch.nn.Module):
    """Trace each `FrameNorm` as plain tensor operations.

    `FrameNorm` runs a custom autograd function for speed on the CPU (statistics by dot products
    along frame rows, outputs written in place), which the TorchScript exporter cannot express
    in ONNX (`linalg_vecdot`). During the export each FrameNorm computes the same per-frame
    statistics with mean/rsqrt instead; the parity check measures the difference (round-off).
    """
    from vr_model.network.layers import FrameNorm

    norms = [module for module in model.modules() if isinstance(module, FrameNorm)]
    for module in norms:
        module.forward = functools.partial(_plain_frame_norm, module)   # shadows the class method
    try:
        yield
    finally:
        for module in norms:
            del module.forward


def _plain_frame_norm(norm, features: torch.Tensor) -> torch.Tensor:
    """`FrameNorm.forward` in plain operations: `(B, C, F, T)` normalised over C x F per frame."""
    batch, channels, bins, frames = features.shape
    flat = features.reshape(batch, channels * bins, frames)                   # (B, C*F, T)
    mean = flat.mean(dim=1, keepdim=True)                                     # (B, 1, T)
    centered = flat - mean
    rstd = torch.rsqrt(centered.square().mean(dim=1, keepdim=True) + norm.eps)
    normalised = (centered * rstd).reshape(batch, channels, bins, frames)
    return normalised * norm.weight + norm.bias


class OnnxMaskNetwork:
    """An exported mask network run by onnxruntime; a `vr_model.inference.masking.MaskNetwork`."""

    def __init__(self, path: str | Path | bytes, device: str = "cpu", threads: int | None = None):
        """`path`: an ONNX file, or its bytes (what `export_onnx` returns)."""
        import onnxruntime

        model = path if isinstance(path, bytes) else None
        path = Path("<onnx bytes>") if model is not None else Path(path)
        if model is None and not path.is_file():
            raise VRDataError(path, "ONNX file not found")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise VRDataError(path, "--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(model if model is not None else str(path), options,
                                                        providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise VRDataError(path, f"cannot load the ONNX model ({str(error).splitlines()[0][:160]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata.get("format") != FORMAT:
            raise VRDataError(path, f"not an exported vr_model mask network (format {metadata.get('format')!r})")
        self.config = json.loads(metadata["model"])
        self.normalisation = InputNormalisation.from_dict(json.loads(metadata["normalisation"]))
        self.stft = StftConfig.from_dict(json.loads(metadata["stft"]))
        self.channels = int(self.config["in_channels"])
        self.bins = int(self.config["bins"]) + 1
        self.max_frames = int(self.config["max_frames"])

    def __call__(self, magnitude: torch.Tensor) -> torch.Tensor:
        if magnitude.shape[-1] > self.max_frames:
            raise VRDataError(None, f"{magnitude.shape[-1]} frames; the network takes at most {self.max_frames}")
        feed = {INPUT: np.ascontiguousarray(magnitude.numpy(), dtype=np.float32)}
        return torch.from_numpy(self.session.run([OUTPUT], feed)[0])


def separator_from_onnx(path: str | Path, device: str = "cpu", options=None):
    """A `Separator` running the exported network, with the normalisation and STFT it carries."""
    from vr_model.inference.separate import SeparationOptions, Separator

    network = OnnxMaskNetwork(path, device)
    return Separator(network, network.normalisation, network.stft, options or SeparationOptions())


def max_abs_difference(model: torch.nn.Module, path: str | Path | bytes, frames: tuple[int, ...] = (1, 7, 32),
                       batch: int = 2, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over random normalised inputs of each frame count."""
    network = OnnxMaskNetwork(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval()
    for count in frames:
        magnitude = torch.rand(batch, network.channels, network.bins, count, generator=generator)
        with torch.inference_mode():
            expected = model(magnitude)
        worst = max(worst, float((network(magnitude) - expected).abs().max()))
    return worst
