"""Decoder denoising pretraining (Asiedu et al. 2022, arXiv 2205.11423) on magnitude spectrograms.

The network sees a noisy crop and predicts the unit Gaussian noise `eps` that was mixed in,

    x_t = sqrt(gamma) * x + sqrt(1 - gamma) * noise_scale * eps,

with its output head unbounded (`FramePrimerConfig.head = "linear"`), under an L2 (default, as
the paper) or L1 loss over the valid frames only.

Where the noise goes (`DenoiseConfig.domain`) decides what the task teaches:

- `log` (default): `x` is the crop's log magnitude `ln(|X| + floor)`, standardised per crop over
  its valid frames (zero mean, unit mean square over channels, bins and frames). The noisy `x_t`
  is mapped back to a magnitude, `exp(sd * x_t + mu)`, and, for `crop_max` inputs, divided by its
  maximum again. So the network gets a magnitude crop in exactly the input domain of supervised
  training (the frozen encoders of the finetuning stage must not see another distribution), the
  noise is multiplicative (log-normal) as spectrogram errors are, and because the standardised
  `x` has unit power, `gamma` sets the signal-to-noise ratio exactly: `gamma / (1 - gamma)`
  (0.95: 19, 12.8 dB), as in the paper, whose images are standardised too.
- `magnitude`: `x` is the normalised magnitude the model would see (the seed fork's domain). A
  `crop_max` spectrogram has almost all of its power in a few bins, so at gamma 0.95 the noise
  drowns most of the crop and `eps` is readable from the input almost without looking at the
  music (docs/training.md has the figures). The fork (gamma 0.95, `|X|/c*2-1`, `eps` scaled by
  0.4, L1) is this domain with `noise_scale = 0.2` and `loss = "l1"`, up to the affine map
  `2x - 1` of the input (and a factor 0.4 on the target).

The paper's reference implementation, `(x + sigma*eps) / sqrt(1 + sigma^2)` with sigma 0.2, is
`gamma = 1 / (1 + sigma^2)` = 0.96 with `noise_scale = 1`; the default gamma 0.95 is within a
hair of it (sigma 0.23).

Noise is a pure function of torch Generators seeded from plain integers (`example_generators`
keys one on each example's (epoch, index)), so a resumed run draws exactly
the noise the uninterrupted run drew, and the noise of an example does not depend on the batch
size or the number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vr_data.errors import VRDataError

DOMAINS = ("log", "magnitude")
LOSSES = ("l2", "l1")
# Smallest per-crop std of the log magnitude: a (near-)silent crop would otherwise divide by 0.
_LOG_STD_FLOOR = 1e-3
_NOISE_SALT = 0x5EED_D0_15E  # keeps the noise streams apart from other uses of the same seed


@dataclass(frozen=True)
class DenoiseConfig:
    """The denoising objective.

    - `gamma`: `(low, high)`; each example draws gamma uniformly from it (`low == high`: fixed).
      Signal power / noise power in the noise domain is `gamma / (1 - gamma)` for unit-power `x`.
    - `domain`: `log` or `magnitude` (module docstring).
    - `noise_scale`: multiplies `eps` in the noisy input (1 as the paper; the fork's 0.4 on its
      `2x - 1` input is 0.2 here). The target stays the unit `eps`.
    - `loss`: `l2` (the paper) or `l1` (the seed's fork).
    - `floor_db`: the log domain's floor, relative to the crop's peak (keeps `ln` finite on
      silent bins; -100 dB is below the float16 store's resolution at the peak's scale).
    """

    gamma: tuple[float, float] = (0.95, 0.95)
    domain: str = "log"
    noise_scale: float = 1.0
    loss: str = "l2"
    floor_db: float = -100.0

    def __post_init__(self) -> None:
        gamma = self.gamma
        if isinstance(gamma, (int, float)):
            gamma = (float(gamma), float(gamma))
        gamma = tuple(float(value) for value in gamma)
        object.__setattr__(self, "gamma", gamma)
        problems = []
        if len(gamma) != 2 or not 0.0 < gamma[0] <= gamma[1] < 1.0:
            problems.append(f"gamma must be a value or a range (low, high) with 0 < low <= high < 1, got {list(gamma)}")
        if self.domain not in DOMAINS:
            problems.append(f"domain must be one of {', '.join(DOMAINS)}, not {self.domain!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not self.noise_scale > 0:
            problems.append("noise_scale must be positive")
        if not self.floor_db < 0:
            problems.append("floor_db must be negative (dB below the crop's peak)")
        if problems:
            raise VRDataError(None, "invalid denoising config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["gamma"] = list(self.gamma)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> DenoiseConfig:
        unknown = set(record) - set(cls.__dataclass_fields__)
        if unknown:
            raise VRDataError(None, f"unknown denoising config keys: {', '.join(sorted(unknown))}")
        return cls(**record)


@dataclass
class NoisyBatch:
    """One noised batch. Tensors are float32 `(B, C, F, T)` unless stated.

    - `model_input`: what the network sees (a magnitude crop in the training input domain for
      `log`; `x_t` itself for `magnitude`); zero on padding frames.
    - `noise`: the unit Gaussian `eps`, the target.
    - `clean`, `noisy`: `x` and `x_t` in the noise domain (zero on padding).
    - `gamma`: `(B,)`.
    """

    model_input: Tensor
    noise: Tensor
    clean: Tensor
    noisy: Tensor
    gamma: Tensor


def noise_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator seeded from (seed, *keys): (seed, epoch, example index) for the trainer.

    A pure function of its arguments: the trainer needs no noise RNG state to resume exactly.
    """
    state = np.random.SeedSequence([_NOISE_SALT, int(seed), *(int(key) for key in keys)]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)  # 63 bits, within manual_seed's range
    return generator


def example_generators(seed: int, epoch: int, indices: Sequence[int], device: str | torch.device = "cpu",
                       ) -> list[torch.Generator]:
    """One generator per example, keyed on (seed, epoch, the example's index in its epoch): the
    noise of an example is the same whatever the batch split, accumulation or world size."""
    return [noise_generator(seed, epoch, int(index), device=device) for index in indices]


def add_noise(
    magnitude: Tensor,
    valid: Tensor,
    config: DenoiseConfig,
    generators: Sequence[torch.Generator],
    normalisation: str = "crop_max",
) -> NoisyBatch:
    """Noise a batch of magnitude crops.

    magnitude `(B, C, F, T)` >= 0 (normalised as `normalisation` says, zero on padding),
    valid `(B, T)` bool (True on real frames), `generators`: one per example on the magnitude's
    device (`example_generators`), each drawing one uniform (gamma) then `C*F*T` normals (eps):
    an example's noise does not depend on its batch -> `NoisyBatch`.
    """
    if magnitude.dim() != 4 or valid.shape != (magnitude.shape[0], magnitude.shape[3]):
        raise VRDataError(None, f"add_noise needs magnitude (B, C, F, T) and valid (B, T), "
                                f"got {tuple(magnitude.shape)} and {tuple(valid.shape)}")
    magnitude = magnitude.float()
    batch = magnitude.shape[0]
    device = magnitude.device
    low, high = config.gamma
    if len(generators) != batch:
        raise VRDataError(None, f"add_noise got {len(generators)} generators for {batch} examples")
    unit = torch.cat([torch.rand(1, generator=g, device=device) for g in generators])
    noise = torch.stack([torch.randn(magnitude.shape[1:], generator=g, device=device) for g in generators])
    gamma = low + (high - low) * unit
    keep = valid.to(device=device, dtype=magnitude.dtype)[:, None, None, :]   # (B, 1, 1, T)
    signal_gain = gamma.sqrt()[:, None, None, None]                          # (B, 1, 1, 1)
    noise_gain = ((1.0 - gamma).sqrt() * config.noise_scale)[:, None, None, None]

    if config.domain == "magnitude":
        clean = magnitude * keep
        noisy = (signal_gain * clean + noise_gain * noise) * keep
        return NoisyBatch(model_input=noisy, noise=noise, clean=clean, noisy=noisy, gamma=gamma)

    # Log domain: standardise ln(|X| + floor) over each crop's valid entries.
    count = keep.sum(dim=(1, 2, 3), keepdim=True) * magnitude.shape[1] * magnitude.shape[2]   # (B, 1, 1, 1)
    peak = (magnitude * keep).amax(dim=(1, 2, 3), keepdim=True)
    floor = peak.clamp_min(1e-30) * 10.0 ** (config.floor_db / 20.0)
    log_magnitude = torch.log(magnitude + floor)
    mean = (log_magnitude * keep).sum(dim=(1, 2, 3), keepdim=True) / count
    centred = (log_magnitude - mean) * keep
    std = ((centred.square().sum(dim=(1, 2, 3), keepdim=True) / count).sqrt()).clamp_min(_LOG_STD_FLOOR)
    clean = centred / std
    noisy = (signal_gain * clean + noise_gain * noise) * keep
    model_input = torch.exp(std * noisy + mean) * keep      # back to a magnitude: ln(model_input) = sd x_t + mu
    if normalisation == "crop_max":                         # the supervised input has peak 1: so does this
        noisy_peak = model_input.amax(dim=(1, 2, 3), keepdim=True)
        model_input = model_input / torch.where(noisy_peak > 0, noisy_peak, torch.ones_like(noisy_peak))
    return NoisyBatch(model_input=model_input, noise=noise, clean=clean, noisy=noisy, gamma=gamma)


def snr_db(gamma: float, signal_power: float = 1.0, noise_scale: float = 1.0) -> float:
    """Signal-to-noise ratio of `x_t` in dB for a signal of mean square `signal_power`."""
    return 10.0 * math.log10(gamma * signal_power / ((1.0 - gamma) * noise_scale**2))
