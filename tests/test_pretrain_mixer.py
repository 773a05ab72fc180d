"""The mixer's `pretrain` kind for denoising pretraining: its library is the pretrain role, and on
request also the pairs' mixtures and instrumentals and the instrumental library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_build_support import GEOMETRY, STFT, write_corpus
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.errors import VRDataError
from vr_data.mixer import MixerConfig, ZarrMixerDataset
from vr_data.mixer.wds_backend import WdsMixerDataset
from vr_data.store.build import build_store

CROP = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Every item in train: 3 pairs, 3 vocals, 2 instrumentals, 1 pretraining track."""
    directory = tmp_path_factory.mktemp("pretrain_mixer")
    roots = write_corpus(directory / "audio")
    manifests = []
    for layout, root in roots.items():
        path = write_manifest(directory / f"{layout}.jsonl", scan(root, ScanOptions(layout=layout, valid_fraction=0.0)).manifest)
        manifests.append(read_manifest(path))
    build_store(manifests, directory / "store", stft=STFT, geometry=GEOMETRY)
    return directory / "store"


def pretrain_config(**overrides) -> MixerConfig:
    values = dict(crop_frames=CROP, batch_size=4, seed=3, proportions={"pretrain": 1.0}, examples_per_epoch=16,
                  silence_rule="keep", swap_probability=0.0, mono_probability=0.0)
    values.update(overrides)
    return MixerConfig(**values)


def test_pretrain_library_is_the_pretrain_role_by_default(store):
    dataset = ZarrMixerDataset(store, pretrain_config())
    entries = dataset.libraries["pretrain"].entries
    assert entries and {(track.role, source) for track, source in entries} == {("pretrain", "audio")}


def test_pretrain_sources_add_pair_mixtures_instrumentals_and_the_instrumental_library(store):
    config = pretrain_config(pretrain_sources=("pretrain", "pair_mixture", "pair_instrumental", "instrumental"))
    dataset = ZarrMixerDataset(store, config)
    kinds = {(track.role, source) for track, source in dataset.libraries["pretrain"].entries}
    assert kinds == {("pretrain", "audio"), ("pair", "mixture"), ("pair", "instrumental"), ("instrumental", "instrumental")}
    assert len(dataset.libraries["pretrain"].entries) == 1 + 3 + 3 + 2
    assert MixerConfig.from_dict(config.to_dict()) == config


def test_a_pretrain_crop_of_a_pair_mixture_is_that_stored_crop(store):
    dataset = ZarrMixerDataset(store, pretrain_config(pretrain_sources=("pair_mixture",), normalisation="none"))
    batch = dataset.example_batch(0, 0)
    plan = dataset.plan(0)
    cells = dataset.cells()["pretrain"]
    for j, index in enumerate(plan.example_indices(0, 0)):
        cell = int(plan.cell[index])
        track, source = dataset.libraries["pretrain"].entries[int(cells.track[cell])]
        assert (track.role, source) == ("pair", "mixture")
        start = int(cells.start[cell])
        stop = min(start + CROP, track.frames)
        expected = np.abs(dataset.store.read_spectrogram(track, source, start, stop))  # (2, bins, frames)
        np.testing.assert_allclose(batch["mixture"][j, :, :, : stop - start].numpy(), expected, rtol=1e-3, atol=1e-6)
        assert np.array_equal(batch["mixture"][j].numpy(), batch["target"][j].numpy())


def test_unknown_pretrain_source_and_wds_with_other_roles_are_refused(store):
    with pytest.raises(VRDataError, match="pretrain_sources"):
        pretrain_config(pretrain_sources=("vocal",))
    with pytest.raises(VRDataError, match="zarr backend"):
        WdsMixerDataset(store, pretrain_config(pretrain_sources=("pretrain", "pair_mixture")))
    WdsMixerDataset(store, pretrain_config())  # the pretrain role alone streams
