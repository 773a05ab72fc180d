"""Shared pieces of the separation, evaluation and export tests: small mask models, checkpoints.

Imported by tests/test_separate*.py, tests/test_evaluate.py and tests/test_export.py; holds no
tests itself. The models see a 256-point STFT (129 bins) so that a network call costs
milliseconds; every code path is the one a full-size model takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vr_data.dsp import StftConfig
from vr_model.network.checkpoint import save_checkpoint
from vr_model.network.config import FramePrimerConfig
from vr_data.mixer.normalisation import InputNormalisation
from vr_model.inference.masking import TorchMaskNetwork
from vr_model.inference.separate import SeparationOptions, Separator
from vr_model.network.unet import FramePrimerUNet

STFT = StftConfig(n_fft=256, hop_length=64)
SMALL = FramePrimerConfig(bins=128, channels=(4, 4, 8), encoder_primers=(0, 1, 1), decoder_primers=(0, 1, 1),
                          num_heads=2, feedforward_expansion=1, max_frames=64, dropout=0.0)
# Short crops and small batches: a two-second song crosses dozens of crop boundaries.
OPTIONS = SeparationOptions(crop_frames=32, overlap=0.5, batch_size=3)
SMALL_CROPS = ["--crop-frames", "32", "--batch-size", "2"]  # the same small crops, as CLI options


def random_model(seed: int = 0, config: FramePrimerConfig = SMALL) -> FramePrimerUNet:
    torch.manual_seed(seed)
    return FramePrimerUNet(config).eval()


def constant_mask_model(value_logit: float, config: FramePrimerConfig = SMALL) -> FramePrimerUNet:
    """A real network whose mask is sigmoid(value_logit) everywhere: the last convolution's
    weights are zero and its bias is the logit (30 gives a mask of exactly 1.0 in float32)."""
    model = random_model(0, config)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.fill_(value_logit)
    return model


def identity_model() -> FramePrimerUNet:
    return constant_mask_model(30.0)


def separator(model: FramePrimerUNet, options: SeparationOptions = OPTIONS,
              normalisation: InputNormalisation = InputNormalisation(), config: StftConfig = STFT) -> Separator:
    return Separator(TorchMaskNetwork(model), normalisation, config, options)


def write_checkpoint(directory: Path, model: FramePrimerUNet, normalisation: InputNormalisation = InputNormalisation(),
                     config: StftConfig = STFT) -> Path:
    """A checkpoint as the trainer writes one: weights, the normalisation and the STFT in `extra`."""
    return save_checkpoint(directory, model, extra_json={"normalisation": normalisation.to_dict(),
                                                         "stft": config.to_dict()})


def song(seconds: float, sample_rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """Harmonics with vibrato plus a little noise, float32 `(channels, samples)`, peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * 220.0 * t + 3.0 * np.sin(2 * np.pi * 5.0 * t)
    tone = sum(np.sin(k * phase + k) / k for k in range(1, 8))
    audio = np.stack([tone * (1.0 - 0.2 * c) for c in range(channels)])
    audio = audio + 0.05 * rng.standard_normal(audio.shape)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate.astype(np.float64)) ** 2))
