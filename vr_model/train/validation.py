"""Validation: the loss on fixed crops of the store's valid split, and the hook for SDR.

The crops are the same at every validation of a run (and of a resumed run): `crops_per_track`
evenly spaced crop cells of every valid pair (mixture -> instrumental). A store with valid
instrumentals and vocals but no valid pairs gets fixed augmented mixes instead (each crop's
vocal and gain are a pure function of its index). The crops go through the training mixer, so
they are normalised exactly as training batches are; augmentations (swaps, mono, dropped
channels) are off.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vr_data.mixer import KINDS, MixerConfig, ZarrMixerDataset
from vr_data.mixer.sampling import EpochPlan
from vr_model.train.objectives import StepContext, forward_terms


class FixedCrops(ZarrMixerDataset):
    """A one-epoch plan of fixed crops: `crops_per_track` evenly spaced cells of every track of
    the `kind` library. The last batch is filled up by repeating crops; `real_examples` says how
    many are real (examples with `index >= real_examples` are ignored)."""

    def __init__(self, store_path: str | Path, config: MixerConfig, kind: str, crops_per_track: int):
        super().__init__(store_path, replace(config, proportions={kind: 1.0}), rank=0, world_size=1)
        cells = self.cells()[kind]
        chosen = []
        for track in np.unique(cells.track):
            of_track = np.flatnonzero(cells.track == track)
            picks = np.unique(np.linspace(0, of_track.size - 1, min(crops_per_track, of_track.size)).round().astype(int))
            chosen.extend(of_track[picks].tolist())
        self.real_examples = len(chosen)
        batch = self.config.batch_size
        padded = -(-len(chosen) // batch) * batch
        cell = np.resize(np.asarray(chosen, np.int64), padded)
        self._fixed = EpochPlan(epoch=0, kinds=np.full(padded, KINDS.index(kind), np.int8), cell=cell,
                                batch_size=batch, world_size=1)

    def plan(self, epoch: int) -> EpochPlan:
        return self._fixed

    def examples_per_epoch(self) -> int:
        return int(self._fixed.kinds.size)


def validation_kind(store, split: str = "valid", objective: str = "supervised") -> str | None:
    """Which example kind the valid split supports: pairs, else augmented mixes, else none.
    Denoising validates on the pretrain role's valid crops where there are some."""
    if objective == "denoise" and store.tracks_by_role("pretrain", split):
        return "pretrain"
    if store.tracks_by_role("pair", split):
        return "pair"
    if store.tracks_by_role("vocal", split) and store.tracks_by_role("instrumental", split):
        return "augmented"
    return None


def validation_mixer_config(train_mixer: MixerConfig, crop_frames: int, batch_size: int) -> MixerConfig:
    """The training mixer's normalisation and seed on the valid split, augmentations off."""
    return replace(
        train_mixer, split="valid", crop_frames=crop_frames, batch_size=batch_size, swap_probability=0.0,
        mono_probability=0.0, instrumental_only_probability=0.0, vocal_channel_drop_probability=0.0,
        vocal_probability=1.0, silence_rule="keep", examples_per_epoch=None,
    )


@torch.no_grad()
def validation_loss(model: nn.Module, crops: FixedCrops, objective, config, device: torch.device,
                    autocast_dtype: torch.dtype | None) -> float:
    """Mean loss of `objective` over every real crop (the same normalisation as training: one
    global sum over one global count)."""
    was_training = model.training
    model.eval()
    error_sum = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    try:
        for k in range(crops.batches_per_rank()):
            batch = crops.example_batch(0, k)
            keep = batch["index"] < crops.real_examples
            if not bool(keep.any()):
                continue
            inputs = {name: value[keep].to(device) for name, value in batch.items()
                      if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == keep.shape[0]}
            terms = forward_terms(objective, model, inputs, config, StepContext(step=0, micro=k, rank=0, world_size=1),
                                  autocast_dtype)
            error_sum += terms.error_sum.double().cpu()
            count += terms.count.double().cpu()
    finally:
        model.train(was_training)
    return float(error_sum / count.clamp_min(1))


class Validator:
    """Runs validation on rank 0: loads the weights to validate into its own model (built once),
    computes the loss on the fixed crops and, when configured, the SDR hook. The training RNG is
    left exactly as it was (`fork_rng`), so validating never changes what training computes."""

    def __init__(self, crops: FixedCrops, model_config, objective, config, device: torch.device,
                 autocast_dtype: torch.dtype | None, normalisation, notice=print):
        self.crops = crops
        self.model_config = model_config
        self.objective = objective
        self.config = config
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.normalisation = normalisation
        self.notice = notice
        self.model = None
        self._sdr_missing_told = False

    def run(self, weights: dict) -> dict:
        """`{"valid_loss": mean loss, ...SDR fields}` of `weights` (a state dict)."""
        from vr_model.network.unet import FramePrimerUNet

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.model is None:
                self.model = FramePrimerUNet(self.model_config).to(self.device)
            self.model.load_state_dict(weights)
            record = {"valid_loss": validation_loss(self.model, self.crops, self.objective, self.config,
                                                    self.device, self.autocast_dtype)}
            songs = self.config.validation.sdr_songs
            sdr = validation_sdr(self.model, self.crops.store_path, songs, self.normalisation, self.device)
            if sdr:
                record.update(sdr)
            elif songs > 0 and not self._sdr_missing_told:
                self.notice("validation: the store has no valid songs to score SDR on; skipped")
                self._sdr_missing_told = True
        return record


def validation_sdr(model: nn.Module, store_path: Path, songs: int, normalisation, device: torch.device) -> dict | None:
    """SDR of `model` on `songs` full valid songs, as `{"valid_sdr": dB, ...}`, or None.

    `validation.sdr_songs = 0` (the default) turns it off; so does a store with no valid songs.
    """
    if songs <= 0:
        return None
    from vr_model.inference.evaluate import valid_sdr

    return valid_sdr(model, store_path, songs=songs, normalisation=normalisation, device=device)
