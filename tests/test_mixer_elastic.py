"""Elastic resume in the mixer (ranks simulated in one process): the examples of an epoch do not
depend on how many ranks make them, a loader state resumes at another world size with exactly
the examples not yet consumed, and the streaming backend, whose crops do depend on the
topology, refuses such a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vr_data.errors import VRDataError
from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset
from vr_data.mixer.wds_backend import WdsMixerDataset

STEP = 4  # examples of one optimizer step, all ranks together


@pytest.fixture
def store(mixer_store) -> Path:
    return mixer_store


def _config(per_rank: int, **overrides) -> MixerConfig:
    values = dict(crop_frames=32, batch_size=per_rank, seed=7, examples_per_epoch=30)
    values.update(overrides)
    return MixerConfig(**values)


def _examples(store, world_size: int, epoch: int = 0) -> dict[int, tuple[dict, torch.Tensor]]:
    """Every example of `epoch` made by `world_size` simulated ranks: index -> (record, mixture)."""
    made = {}
    for rank in range(world_size):
        dataset = ZarrMixerDataset(store, _config(STEP // world_size), rank=rank, world_size=world_size,
                                   step_examples=STEP)
        dataset.records = True
        for k in range(dataset.batches_per_rank()):
            batch = dataset.example_batch(epoch, k)
            for record, mixture in zip(batch["examples"], batch["mixture"]):
                assert record["index"] not in made
                made[record["index"]] = (record, mixture)
    return made


def test_every_example_is_the_same_at_one_two_and_four_ranks(store):
    one = _examples(store, 1, epoch=1)
    assert sorted(one) == list(range(28))   # 30 examples rounded down to whole steps of 4
    for world_size in (2, 4):
        other = _examples(store, world_size, epoch=1)
        assert sorted(other) == sorted(one)
        for index, (record, mixture) in one.items():
            assert other[index][0] == record
            assert torch.equal(other[index][1], mixture)


def test_a_record_names_the_tracks_offsets_and_gains_of_its_example(store):
    dataset = ZarrMixerDataset(store, _config(STEP))
    ids = {track.id for track in dataset.store.tracks}
    records = [record for record, _ in _examples(store, 1).values()]
    assert {record["kind"] for record in records} >= {"pair", "augmented"}
    for record in records:
        assert set(record["tracks"]) <= ids and len(record["tracks"]) == len(record["frames"]) == len(record["sources"])
        assert len(record["gains"]) == (2 if len(record["tracks"]) == 2 else 0)
        assert all(frame >= 0 for frame in record["frames"])


def _consume(loader: MixerLoader, batches: int) -> list[int]:
    indices = []
    for batch in loader:
        indices += batch["index"].tolist()
        if len(indices) >= batches * loader.examples_per_batch() // loader.dataset.world_size:
            break
    return indices


@pytest.mark.parametrize("after, older", [(1, False), (4, False), (1, True)])
def test_a_two_rank_state_resumes_at_another_world_size_with_the_examples_not_yet_made(store, after, older):
    """`older`: a state saved before the global position was recorded (epoch, batch, config,
    world size): the position follows from its batch size and world size."""
    before = [MixerLoader(ZarrMixerDataset(store, _config(2), rank=rank, world_size=2, step_examples=STEP))
              for rank in range(2)]
    seen = [index for loader in before for index in _consume(loader, 3)]
    assert sorted(seen) == list(range(12))
    state = before[0].state_dict()
    assert state["examples"] == 12
    if older:
        state = {key: value for key, value in state.items() if key not in ("examples", "step_examples", "workers")}
    resumed = []
    for rank in range(after):
        loader = MixerLoader(ZarrMixerDataset(store, _config(STEP // after), rank=rank, world_size=after,
                                              step_examples=STEP))
        loader.load_state_dict(state)
        resumed += [index for batch in loader for index in batch["index"].tolist()]
    assert sorted(resumed) == list(range(12, 28))  # the rest of the epoch, each example once


def test_a_state_from_another_step_size_is_refused(store):
    state = MixerLoader(ZarrMixerDataset(store, _config(4))).state_dict()
    loader = MixerLoader(ZarrMixerDataset(store, _config(4), step_examples=8))
    with pytest.raises(VRDataError, match="step_examples: saved 4, now 8"):
        loader.load_state_dict(state)


def test_the_streaming_backend_refuses_another_world_size_or_worker_count(store):
    state = MixerLoader(WdsMixerDataset(store, _config(2), rank=0, world_size=2)).state_dict()
    with pytest.raises(VRDataError, match="world_size: saved 2, now 1.*same ranks and workers"):
        MixerLoader(WdsMixerDataset(store, _config(4))).load_state_dict(state)
    with pytest.raises(VRDataError, match="workers: saved 0, now 2"):
        MixerLoader(WdsMixerDataset(store, _config(2), rank=0, world_size=2), num_workers=2).load_state_dict(state)

