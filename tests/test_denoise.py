"""The denoising objective as the trainer runs it (per-example generators, `denoise_objective`):
noise at the stated SNR, in the stated domain, deterministic per example, a loss over valid
frames and bins below Nyquist; and the loss of a very small linear-head model falls."""

from __future__ import annotations

import math

import pytest
import torch

from vr_data.errors import VRDataError
from vr_model.network.config import FramePrimerConfig
from vr_model.network.unet import FramePrimerUNet
from vr_model.train.config import load_config
from vr_model.train.denoise import DenoiseConfig, add_noise, example_generators, snr_db
from vr_model.train.objectives import StepContext, denoise_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = FramePrimerConfig(bins=64, channels=(4, 6, 8), encoder_primers=(0, 1, 1), decoder_primers=(0, 1, 1),
                          num_heads=2, feedforward_expansion=1, max_frames=32, dropout=0.0, head="linear")


def harmonic_spectra(generator: torch.Generator, batch: int = 8, frames: int = 32, bins: int = 65) -> torch.Tensor:
    """Crop-max-normalised magnitudes `(batch, 2, bins, frames)`: a few decaying partials of a
    random fundamental with per-frame level changes, over a -60 dB floor."""
    f0 = 2 + 6 * torch.rand(batch, 1, 1, 1, generator=generator)
    index = torch.arange(bins, dtype=torch.float32)[None, None, :, None]
    magnitude = 1e-3 * torch.rand(batch, 2, bins, frames, generator=generator)
    for k in range(1, 8):
        level = 0.5 + torch.rand(batch, 2, 1, frames, generator=generator)
        magnitude = magnitude + 0.7**k * torch.exp(-0.5 * ((index - f0 * k) / 0.7) ** 2) * level
    return magnitude / magnitude.amax(dim=(1, 2, 3), keepdim=True)


def padded_valid(batch: int, frames: int, lengths: list[int]) -> torch.Tensor:
    return torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]


def masked_mean_square(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    keep = valid[:, None, None, :].float()
    return (values.square() * keep).sum() / (keep.sum() * values.shape[1] * values.shape[2])


@pytest.mark.parametrize("gamma", [0.8, 0.95])
def test_log_domain_noise_has_the_snr_gamma_over_one_minus_gamma(gamma):
    # 8 x 2 x 65 x ~220 entries: the measured noise power is within ~0.015 dB of its expectation.
    magnitude = harmonic_spectra(torch.Generator().manual_seed(0), batch=8, frames=256)
    valid = padded_valid(8, 256, [256, 200, 256, 130, 256, 256, 180, 256])
    magnitude = magnitude * valid[:, None, None, :]
    noisy = add_noise(magnitude, valid, DenoiseConfig(gamma=gamma), example_generators(0, 0, range(8)))
    assert masked_mean_square(noisy.clean, valid).item() == pytest.approx(1.0, abs=1e-5)  # unit-power signal
    signal = math.sqrt(gamma) * noisy.clean
    noise_part = noisy.noisy - signal
    measured = 10 * math.log10(masked_mean_square(signal, valid).item() / masked_mean_square(noise_part, valid).item())
    assert measured == pytest.approx(snr_db(gamma), abs=0.05)
    assert snr_db(0.95) == pytest.approx(12.79, abs=0.01)
    torch.testing.assert_close(noise_part, math.sqrt(1 - gamma) * noisy.noise * valid[:, None, None, :])


def test_log_domain_model_input_is_the_noisy_log_magnitude_mapped_back():
    magnitude = harmonic_spectra(torch.Generator().manual_seed(1), batch=3, frames=40)
    valid = padded_valid(3, 40, [40, 40, 25])
    magnitude = magnitude * valid[:, None, None, :]
    noisy = add_noise(magnitude, valid, DenoiseConfig(gamma=0.9), example_generators(0, 1, range(3)))
    keep = valid[:, None, None, :]
    assert torch.all(noisy.model_input[~keep.expand_as(noisy.model_input)] == 0)  # padding stays zero
    assert torch.allclose(noisy.model_input.amax(dim=(1, 2, 3)), torch.ones(3))  # crop_max contract: peak 1
    for example in range(3):
        frames = int(valid[example].sum())
        log_input = noisy.model_input[example, :, :, :frames].log().flatten()
        x_t = noisy.noisy[example, :, :, :frames].flatten()
        # ln(input) = sd * x_t + const: an exact affine function of the noisy log magnitude.
        standardised = lambda v: (v - v.mean()) / v.std()
        torch.testing.assert_close(standardised(log_input), standardised(x_t), atol=2e-4, rtol=0)


def test_magnitude_domain_adds_scaled_noise_to_the_input_itself():
    magnitude = harmonic_spectra(torch.Generator().manual_seed(2), batch=2, frames=16)
    valid = torch.ones(2, 16, dtype=torch.bool)
    config = DenoiseConfig(gamma=0.95, domain="magnitude", noise_scale=0.2, loss="l1")
    noisy = add_noise(magnitude, valid, config, example_generators(3, 4, range(2)))
    expected = math.sqrt(0.95) * magnitude + math.sqrt(0.05) * 0.2 * noisy.noise
    torch.testing.assert_close(noisy.model_input, expected)


def test_noise_is_a_pure_function_of_seed_epoch_and_index_and_gamma_is_drawn_per_example_in_range():
    magnitude = harmonic_spectra(torch.Generator().manual_seed(3), batch=16, frames=8)
    valid = torch.ones(16, 8, dtype=torch.bool)
    config = DenoiseConfig(gamma=(0.9, 0.99))
    first = add_noise(magnitude, valid, config, example_generators(7, 10, range(16)))
    again = add_noise(magnitude, valid, config, example_generators(7, 10, range(16)))
    other_seed = add_noise(magnitude, valid, config, example_generators(8, 10, range(16)))
    other_indices = add_noise(magnitude, valid, config, example_generators(7, 10, range(16, 32)))
    assert torch.equal(first.noise, again.noise) and torch.equal(first.model_input, again.model_input)
    assert not torch.equal(first.noise, other_seed.noise)
    assert not torch.equal(first.noise, other_indices.noise)
    assert torch.all((first.gamma >= 0.9) & (first.gamma <= 0.99))
    assert first.gamma.std() > 0.01
    fixed = add_noise(magnitude, valid, DenoiseConfig(gamma=0.95), example_generators(7, 10, range(16)))
    assert torch.all(fixed.gamma == torch.tensor(0.95))


def test_per_example_noise_does_not_depend_on_the_batch_split():
    magnitude = harmonic_spectra(torch.Generator().manual_seed(5), batch=6, frames=8)
    valid = torch.ones(6, 8, dtype=torch.bool)
    config = DenoiseConfig(gamma=(0.9, 0.99))
    whole = add_noise(magnitude, valid, config, example_generators(3, 2, range(6)))
    halves = [add_noise(magnitude[part], valid[part], config, example_generators(3, 2, range(6)[part]))
              for part in (slice(0, 3), slice(3, 6))]
    assert torch.equal(whole.noise, torch.cat([half.noise for half in halves]))
    assert torch.equal(whole.gamma, torch.cat([half.gamma for half in halves]))
    assert torch.equal(whole.model_input, torch.cat([half.model_input for half in halves]))
    next_epoch = add_noise(magnitude, valid, config, example_generators(3, 3, range(6)))
    assert not torch.equal(whole.noise, next_epoch.noise)


def denoise_batch(magnitude: torch.Tensor, valid: torch.Tensor, first_index: int = 0) -> dict:
    """A mixer-format batch of pretraining crops (`index`: each example's index in its epoch)."""
    return {"mixture": magnitude, "valid": valid, "epoch": 0,
            "index": torch.arange(first_index, first_index + magnitude.shape[0])}


class NoiseOracle(torch.nn.Module):
    """Predicts the objective's own noise (redrawn from the same per-example generators) plus
    0.5 on valid frames below Nyquist, and garbage on padding frames and the Nyquist bin."""

    def __init__(self, config, batch):
        super().__init__()
        noisy = add_noise(batch["mixture"], batch["valid"], config.denoise_config(),
                          example_generators(config.train.seed, 0, batch["index"].tolist()), "crop_max")
        self.prediction = noisy.noise + 0.5
        self.prediction[:, :, -1] = -100.0                                     # Nyquist
        self.prediction[~batch["valid"][:, None, None, :].expand_as(self.prediction)] = 100.0

    def forward(self, model_input, frame_mask):
        return self.prediction


@pytest.mark.parametrize("loss, expected", [("l2", 0.25), ("l1", 0.5)])
def test_the_objective_counts_only_valid_frames_and_bins_below_nyquist(loss, expected):
    config = load_config(None, ["train.objective=denoise", f"denoise.loss={loss}"])
    valid = padded_valid(2, 10, [10, 6])
    batch = denoise_batch(harmonic_spectra(torch.Generator().manual_seed(4), batch=2, frames=10) * valid[:, None, None, :],
                          valid)
    terms = denoise_objective(NoiseOracle(config, batch), batch, config, StepContext(1, 0, 0, 1))
    assert terms.count.item() == (10 + 6) * 2 * 64
    assert (terms.error_sum / terms.count).item() == pytest.approx(expected)


def test_config_rejects_bad_gamma_domain_and_round_trips():
    for bad in ({"gamma": 1.0}, {"gamma": (0.99, 0.9)}, {"domain": "power"}, {"loss": "l3"}):
        with pytest.raises(VRDataError):
            DenoiseConfig(**bad)
    config = DenoiseConfig(gamma=(0.9, 0.97), loss="l1")
    assert DenoiseConfig.from_dict(config.to_dict()) == config
    assert DenoiseConfig(gamma=0.95).gamma == (0.95, 0.95)


def test_denoising_loss_falls_on_synthetic_spectra():
    torch.manual_seed(0)
    model = FramePrimerUNet(SMALL).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    config = load_config(None, ["train.objective=denoise"])
    losses = []
    for step in range(40):
        batch = denoise_batch(harmonic_spectra(data), torch.ones(8, 32, dtype=torch.bool), first_index=8 * step)
        terms = denoise_objective(model, batch, config, StepContext(step + 1, 0, 0, 1))
        loss = terms.error_sum / terms.count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.95 * first, losses
    assert last < 1.0  # below predicting zero (the loss of eps against 0 is E[eps^2] = 1)
