"""vr_model: the frame primer U-Net, its presets, checkpoints and inference helpers."""

from vr_model.network.config import FramePrimerConfig
from vr_model.network.presets import PRESETS, build_model, count_parameters, get_config
from vr_model.network.unet import FramePrimerUNet

__all__ = ["FramePrimerConfig", "FramePrimerUNet", "PRESETS", "build_model", "count_parameters", "get_config"]
