"""Named model configs and `build_model`.

- `frame-primer`: the seed's model: 5 encoder and 5 decoder levels, 2 frame primer encoders and
  2 decoders per level, 3x3 kernels, GELU. The seed reports 108,229,338 parameters without
  publishing the widths. Channels growing by 16 per level (the fork's `channels * (i + 1)`)
  and a feed-forward 6x the level's bins give 108,190,824 (-0.04%). 98.8% of them sit in the
  frame primer modules, whose size depends on the bins per level, the feed-forward expansion
  and max_frames (relative embeddings), not on the channel widths, so the count pins down
  the expansion far better than the widths.
- `tiny`: the same architecture at 2,698,948 parameters, for tests, demos and CPU training.
  A frame primer at full resolution costs about 4 x 1024^2 weights per attention, so `tiny`
  keeps its primers on the three coarsest levels (256, 128 and 64 bins).
"""

from __future__ import annotations

from typing import Any

from vr_data.errors import ConfigError
from vr_model.network.config import FramePrimerConfig
from vr_model.network.unet import FramePrimerUNet

SEED_PARAMETERS = 108_229_338

PRESETS: dict[str, FramePrimerConfig] = {
    "frame-primer": FramePrimerConfig(
        channels=(16, 32, 48, 64, 80),
        encoder_primers=(2, 2, 2, 2, 2),
        decoder_primers=(2, 2, 2, 2, 2),
        num_heads=8,
        feedforward_expansion=6,
        max_frames=2048,
        dropout=0.1,
    ),
    "tiny": FramePrimerConfig(
        channels=(8, 8, 12, 12, 16),
        encoder_primers=(0, 0, 1, 1, 1),
        decoder_primers=(0, 0, 1, 1, 1),
        num_heads=4,
        feedforward_expansion=2,
        max_frames=1024,
        dropout=0.0,
    ),
}

DESCRIPTIONS = {
    "frame-primer": "seed architecture: 5+5 levels, 2+2 frame primers per level",
    "tiny": "same architecture, primers on the 3 coarsest levels; trains on a CPU",
}


def get_config(name_or_config: str | FramePrimerConfig | dict[str, Any]) -> FramePrimerConfig:
    """A config from a preset name, a config, or a `to_dict()` dict."""
    if isinstance(name_or_config, FramePrimerConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return FramePrimerConfig.from_dict(name_or_config)
    if name_or_config not in PRESETS:
        raise ConfigError(None, f"unknown model preset {name_or_config!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name_or_config]


def build_model(name_or_config: str | FramePrimerConfig | dict[str, Any]) -> FramePrimerUNet:
    """A freshly initialised `FramePrimerUNet` for a preset name, a config or a config dict."""
    return FramePrimerUNet(get_config(name_or_config))


def count_parameters(name_or_config: str | FramePrimerConfig | dict[str, Any]) -> int:
    """Parameter count of a config, built on the meta device (no memory, no init time)."""
    import torch

    with torch.device("meta"):
        model = build_model(name_or_config)
    return model.num_parameters()
