"""Pretraining streams its library: peak RSS does not grow with the library's size.

Two Zarr-only stores of pretraining audio, 4 and 16 minutes (about 85 and 340 MB of float16
spectrogram at n_fft 512). In a fresh process for each: a short denoising run through the trainer,
then one whole epoch of the same loader (every crop cell of the library read once) with the
noise added. Were the library held in memory, the larger store would add its ~255 MB; streaming,
the peaks differ by the crop-cell tables and allocator noise only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_build_support import STFT
from vr_data.audio import write_audio
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.store.build import build_store
from vr_data.store.format import Geometry

TRACK_SECONDS = 120

CHILD = r"""
import json, resource, sys
from vr_data.mixer import MixerLoader, ZarrMixerDataset
from vr_model.train.denoise import add_noise, example_generators
from vr_model.train import load_config, train

store, run = sys.argv[1], sys.argv[2]
config = load_config(None, [
    "model.preset=tiny", "model.overrides.bins=256", "model.overrides.channels=[4, 4, 6, 6, 8]",
    "train.threads=1", "data.workers=0", "log.tensorboard=false", "validation.every=0",
    "train.objective=denoise", "curriculum=[{crop_frames=256, batch_size=4, accumulation=1, steps=3}]"])
train(store, run, config)
after_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
mixer = config.mixer_config(config.curriculum[0], 16)
loader = MixerLoader(ZarrMixerDataset(store, mixer), num_workers=0, reuse_outputs=True)
batches = 0
for batch in loader:  # one whole epoch: every crop cell of the library once
    add_noise(batch["mixture"], batch["valid"], config.denoise_config(),
              example_generators(0, batch["epoch"], batch["index"].tolist()))
    batches += 1
print(json.dumps({"after_train_mb": after_train, "batches": batches,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def pretraining_store(directory: Path, tracks: int) -> Path:
    """`tracks` two-minute stereo tracks of shaped noise (every bin busy: nothing compresses away)."""
    rng = np.random.default_rng(tracks)
    for index in range(tracks):
        noise = rng.standard_normal((2, TRACK_SECONDS * 44100)).astype(np.float32)
        noise[:, 1:] += 0.9 * noise[:, :-1]                      # a tilt towards low frequencies
        write_audio(directory / "audio" / f"radio_{index:02d}.wav", 0.05 * noise, 44100)
    manifest = write_manifest(directory / "pretrain.jsonl",
                              scan(directory / "audio", ScanOptions(layout="pretrain", valid_fraction=0.0)).manifest)
    build_store([read_manifest(manifest)], directory / "store", stft=STFT, geometry=Geometry(wds=False))
    return directory / "store"


def peak_rss(store: Path, run: Path) -> dict:
    child = subprocess.run([sys.executable, "-c", CHILD, str(store), str(run)], check=True, capture_output=True,
                           text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pretraining_peak_rss_does_not_grow_with_the_library(tmp_path):
    small = peak_rss(pretraining_store(tmp_path / "small", 2), tmp_path / "run-small")
    large = peak_rss(pretraining_store(tmp_path / "large", 8), tmp_path / "run-large")
    frames_per_minute = 60 * 44100 / STFT.hop_length
    float16_mb_per_minute = frames_per_minute * 2 * 2 * STFT.bins * 2 / 2**20
    extra_library_mb = 6 * TRACK_SECONDS / 60 * float16_mb_per_minute           # ~250 MB
    assert large["batches"] >= 3.5 * small["batches"]                          # the whole library was read
    growth = large["peak_mb"] - small["peak_mb"]
    print(f"peak RSS {small['peak_mb']:.0f} MB (4 min) vs {large['peak_mb']:.0f} MB (16 min): "
          f"{growth:+.0f} MB for {extra_library_mb:.0f} MB more library")
    assert growth < 0.15 * extra_library_mb
