"""`FramePrimerConfig`: every hyperparameter of the frame primer U-Net in one dataclass.

Checkpoints store it as JSON (`to_dict`/`from_dict`) next to the safetensors weights, and the
model is rebuilt from it; presets are just named instances (`vr_model.network.presets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vr_data.errors import ConfigError

HEADS = ("mask", "linear")  # FramePrimerConfig.head: sigmoid mask, or unbounded output


@dataclass(frozen=True)
class FramePrimerConfig:
    """Shape of a frame primer U-Net.

    Level `l` (0 = full resolution) works on `bins // 2**l` frequency bins and every frame; the
    per-level tuples below all have one entry per level.

    - `bins`: bins the model sees (n_fft // 2; the Nyquist bin is dropped and restored outside).
    - `channels[l]`: convolution width at level `l`.
    - `encoder_primers[l]` / `decoder_primers[l]`: frame primer encoders / decoders at level `l`
      (each appends one channel to the feature map).
    - `res_blocks`: residual blocks per encoder and per decoder level.
    - `num_heads`: attention heads at every level (one value: the residual-attention score
      chains have shape (batch, heads, frames, frames) across levels).
    - `feedforward_expansion`: transformer feed-forward width = expansion x bins at that level.
    - `max_frames`: longest crop the relative position embeddings cover.
    - `head`: what the last 1x1 convolution's output becomes. `"mask"` (default): a sigmoid
      instrumental mask in [0, 1], to multiply with the mixture. `"linear"`: the unbounded
      output itself (no sigmoid), for regression targets such as denoising pretraining.
      Both replicate the last kept bin for the Nyquist bin.

    The defaults are the `frame-primer` preset (the seed's model).
    """

    in_channels: int = 2
    bins: int = 1024
    channels: tuple[int, ...] = (16, 32, 48, 64, 80)
    encoder_primers: tuple[int, ...] = (2, 2, 2, 2, 2)
    decoder_primers: tuple[int, ...] = (2, 2, 2, 2, 2)
    res_blocks: int = 1
    kernel_size: int = 3
    num_heads: int = 8
    feedforward_expansion: int = 6
    max_frames: int = 2048
    dropout: float = 0.1
    head: str = "mask"

    def __post_init__(self) -> None:
        for name in ("channels", "encoder_primers", "decoder_primers"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))
        levels = len(self.channels)
        problems = []
        if levels < 1:
            problems.append("channels must name at least one level")
        if len(self.encoder_primers) != levels or len(self.decoder_primers) != levels:
            problems.append("channels, encoder_primers and decoder_primers need one entry per level")
        elif levels:
            if self.bins % (2 ** (levels - 1)):
                problems.append(f"bins {self.bins} is not divisible by 2**{levels - 1}")
            for level in range(levels):
                has_primers = self.encoder_primers[level] + self.decoder_primers[level] > 0
                if has_primers and (self.bins >> level) % self.num_heads:
                    problems.append(f"level {level}: {self.bins >> level} bins do not split into {self.num_heads} heads")
        if self.kernel_size % 2 != 1:
            problems.append("kernel_size must be odd (same padding)")
        if self.res_blocks < 1 or self.max_frames < 1 or self.feedforward_expansion < 1:
            problems.append("res_blocks, max_frames and feedforward_expansion must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if self.head not in HEADS:
            problems.append(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if problems:
            raise ConfigError(None, "invalid frame primer config: " + "; ".join(problems))

    @property
    def levels(self) -> int:
        return len(self.channels)

    def level_bins(self, level: int) -> int:
        """Frequency bins at `level` (halved once per level)."""
        return self.bins >> level

    def replace(self, **changes: Any) -> "FramePrimerConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            out[item.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FramePrimerConfig":
        """Inverse of `to_dict`; unknown keys are an error, missing keys take the defaults.

        Missing keys make older configs load: one saved before `head` existed is a mask model.
        """
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(None, f"unknown frame primer config keys: {', '.join(unknown)}")
        return cls(**values)
