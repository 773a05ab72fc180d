"""The streaming mixer: PyTorch datasets of training batches built on the fly from a store.

Three kinds of examples, in configurable proportions (`MixerConfig.proportions`):

- `pair`: an aligned crop of a pair's mixture and instrumental;
- `augmented`: an instrumental crop (instrumental library and/or pairs' instrumentals) plus a
  vocal crop from the vocal library, mixed in the complex STFT domain (exact: the STFT is
  linear), with a random vocal gain, independent offsets, channel swaps, occasional mono, polarity
  flips, one vocal channel dropped now and then, and some vocal-free examples;
- `pretrain`: crops of the pretraining library (mixture = target, for the denoising objective).

Modules: `config` (MixerConfig, the per-example Recipe), `sampling` (epoch plans), `kernels`
(the fused mixing kernel), `base` (what both backends share; the batch format), `zarr_backend`
(random access: `ZarrMixerDataset`), `wds_backend` (sequential streaming: `WdsMixerDataset`),
`loader` (`MixerLoader`, exact mid-epoch resume), `preview` (WAVs and a spectrogram sheet).
"""

from vr_data.mixer.base import MixerBase
from vr_data.mixer.config import MixerConfig, Recipe
from vr_data.mixer.loader import MixerLoader
from vr_data.mixer.sampling import KINDS
from vr_data.mixer.wds_backend import WdsMixerDataset
from vr_data.mixer.zarr_backend import ZarrMixerDataset

__all__ = ["KINDS", "MixerBase", "MixerConfig", "MixerLoader", "Recipe", "WdsMixerDataset", "ZarrMixerDataset"]
