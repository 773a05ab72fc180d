"""The one input normalisation of the model, shared by the mixer (training) and inference.

The mixer (`MixerConfig.normalisation`) scales the magnitudes it yields; the trainer records that
scaling in every checkpoint as an `InputNormalisation`; inference (`vr_model.inference.masking`)
scales every crop it gives the model with the same object and the same float32 operations, so a
crop of a song reaches the network with the same numbers in training and in separation
(tests/test_train.py checks it on a real batch). Kinds:

- `crop_max`: each crop is multiplied by `float32(1 / peak)`, its mixture's maximum over
  channels, bins and frames, and clipped at 1 (`kernels.scale_clip_in_place`; padding is zero,
  so it never sets the maximum). Crop-level, because an augmented mix has no song whose maximum
  could be used; at inference every crop of a song is scaled by its own maximum.
- `stats`: every frequency bin is multiplied by a fixed factor, `exp(-mean ln(|X| + eps))` of
  that bin over the training store (`STORE/stats.json`); the factors travel in the checkpoint.
- `none`: raw STFT magnitudes.

The model's output is a mask, so a scale common to mixture and target leaves the ideal mask as it
is: only the input distribution the network sees depends on the normalisation. numpy only: the
mixer's workers never import a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vr_data.errors import VRDataError
from vr_data.mixer.kernels import scale_clip_in_place

KINDS = ("crop_max", "stats", "none")


@dataclass(frozen=True)
class InputNormalisation:
    """How model inputs are scaled. `bin_scale`: `(bins,)` float32 factors, `stats` only."""

    kind: str = "crop_max"
    bin_scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VRDataError(None, f"normalisation must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if (self.kind == "stats") != (self.bin_scale is not None):
            raise VRDataError(None, "the 'stats' normalisation needs bin_scale, and only it has one")
        if self.bin_scale is not None:
            object.__setattr__(self, "bin_scale", tuple(float(value) for value in self.bin_scale))

    def normalise_example(self, mixture: np.ndarray, target: np.ndarray | None, peak: float) -> float:
        """Scale one example in place: float32 `(channels, bins, frames)` mixture and target
        magnitudes (`target` may be None), `peak` the mixture's maximum. Returns what the
        magnitudes were divided by (the batch's `scale`: the peak for `crop_max`, else 1)."""
        arrays = [mixture] if target is None else [mixture, target]
        if self.kind == "crop_max":
            if peak <= 0:
                return 1.0
            factor = np.float32(1.0 / peak)
            for values in arrays:
                scale_clip_in_place(values, factor)
            return float(peak)
        if self.kind == "stats":
            scale = self._bin_scale(mixture.shape[-2])[:, None]                   # (bins, 1)
            for values in arrays:
                np.multiply(values, scale, out=values)
        return 1.0

    def apply(self, magnitude: np.ndarray) -> np.ndarray:
        """Scale a batch of crops in place, each as the mixer scaled its training crop:
        float32 `(B, channels, bins, frames)` -> the same array."""
        for crop in magnitude:
            self.normalise_example(crop, None, float(crop.max()) if crop.size else 0.0)
        return magnitude

    def _bin_scale(self, bins: int) -> np.ndarray:
        scale = np.asarray(self.bin_scale, np.float32)
        if scale.size != bins:
            raise VRDataError(None, f"normalisation has {scale.size} bins, input has {bins}")
        return scale

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
        from vr_data.store.normalisation import load_normalisation

        mean, _ = load_normalisation(store_path, stats_role)
        return cls(kind="stats", bin_scale=tuple(np.exp(-mean).astype(np.float32).tolist()))
