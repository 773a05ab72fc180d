"""Decoding a manifest item's sources: the bridge from the catalog to the audio module.

The manifest schema (`vr_data.catalog.manifest`) only describes files; this module turns an
item's source into audio, for the store builder and the content statistics.
"""

from __future__ import annotations

import numpy as np

from vr_data.audio import load_audio
from vr_data.catalog.manifest import Item, Manifest
from vr_data.errors import VRDataError


def load_item_source(manifest: Manifest, item: Item, source: str, sample_rate: int = 44100,
                     downmix: bool = False) -> np.ndarray:
    """Decode one source of an item to float32 `(2, samples)` at `sample_rate`.

    Sources made of several files (MUSDB's instrumental = drums + bass + other) are summed,
    trimmed to the shortest file. Checks were done at scan time, so silence is allowed here.
    """
    total = None
    for path in manifest.source_paths(item, source):
        audio = load_audio(path, sample_rate, downmix=downmix, silence_dbfs=None)
        if total is None:
            total = audio
        else:
            length = min(total.shape[1], audio.shape[1])
            total = total[:, :length] + audio[:, :length]
    if total is None:
        raise VRDataError(manifest.source_path, f"item {item.id} has no files for source {source!r}")
    return total
