"""The one input-normalisation contract between training and inference.

The mixer (`vr_data.mixer`, `MixerConfig.normalisation`) scales the magnitudes it yields; the
trainer records that scaling in every checkpoint as an `InputNormalisation`; inference applies
exactly the same scaling to the model's input. Kinds:

- `crop_max`: each crop is divided by its own mixture maximum over channels, bins and frames
  (padding is zero, so it never sets the maximum). Crop-level, because an augmented mix has no
  song whose maximum could be used; at inference every crop of a song is scaled by its own max.
- `stats`: every frequency bin is multiplied by a fixed factor, `exp(-mean ln(|X| + eps))` of
  that bin over the training store (`STORE/stats.json`); the factors travel in the checkpoint.
- `none`: raw STFT magnitudes.

The model's output is a mask, so a scale common to mixture and target leaves the ideal mask as it
is: only the input distribution the network sees depends on the normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vr_data.errors import VRDataError

KINDS = ("crop_max", "stats", "none")


@dataclass(frozen=True)
class InputNormalisation:
    """How model inputs were scaled in training. `bin_scale`: `(bins,)` factors, `stats` only."""

    kind: str = "crop_max"
    bin_scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VRDataError(None, f"normalisation must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if (self.kind == "stats") != (self.bin_scale is not None):
            raise VRDataError(None, "the 'stats' normalisation needs bin_scale, and only it has one")
        if self.bin_scale is not None:
            object.__setattr__(self, "bin_scale", tuple(float(value) for value in self.bin_scale))

    def apply(self, magnitude: Tensor) -> Tensor:
        """Scale a batch of crops as training did: `(B, C, bins, T)` float -> same shape.

        Padding frames must be zero (they are in mixer batches and in inference crops)."""
        if self.kind == "crop_max":
            peak = magnitude.detach().amax(dim=(1, 2, 3), keepdim=True)           # (B, 1, 1, 1)
            return magnitude / torch.where(peak > 0, peak, torch.ones_like(peak))
        if self.kind == "stats":
            scale = torch.tensor(self.bin_scale, dtype=magnitude.dtype, device=magnitude.device)
            if scale.numel() != magnitude.shape[2]:
                raise VRDataError(None, f"normalisation has {scale.numel()} bins, input has {magnitude.shape[2]}")
            return magnitude * scale[None, None, :, None]
        return magnitude

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "bin_scale": None if self.bin_scale is None else list(self.bin_scale)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "InputNormalisation":
        unknown = set(record) - {"kind", "bin_scale"}
        if unknown:
            raise VRDataError(None, f"unknown normalisation keys: {', '.join(sorted(unknown))}")
        return cls(kind=record.get("kind", "crop_max"), bin_scale=record.get("bin_scale"))

    @classmethod
    def for_mixer(cls, store_path: str | Path, kind: str, stats_role: str = "pair") -> "InputNormalisation":
        """The normalisation a mixer with `normalisation=kind` applies to this store's crops."""
        if kind != "stats":
            return cls(kind=kind)
        import numpy as np

        from vr_data.store.normalisation import load_normalisation

        mean, _ = load_normalisation(store_path, stats_role)
        return cls(kind="stats", bin_scale=tuple(np.exp(-mean).astype(np.float32).tolist()))
