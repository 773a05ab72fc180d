"""The mixer's variety, integrity and contracts: crop starts that move every epoch, vocal offsets
anywhere, WebDataset batches that mix tracks, damaged data that raises, shard paths that stay in
the store, epoch lengths that ignore how proportions are written, resume states that must match,
and a light import for spawned workers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_build_support import GEOMETRY, STFT, as_built_before_checksums, flip_byte, tar_member_data
from vr_data.errors import VRDataError
from vr_data.mixer import MixerConfig, MixerLoader, Recipe, ZarrMixerDataset
from vr_data.mixer.base import normalised_proportions
from vr_data.mixer.sampling import crop_cells, nominal_cells
from vr_data.mixer.wds_backend import WdsMixerDataset, _Run
from vr_data.store.reader import StoreIntegrityWarning

CROP = 32


@pytest.fixture
def store(mixer_store) -> Path:
    return mixer_store


@pytest.fixture(scope="module")
def many_tracks(tmp_path_factory) -> Path:
    """24 instrumentals and 6 vocals of 1.2 s, all in train, one tar per track (as in a real store):
    enough tracks to count how many a batch mixes."""
    from dataclasses import replace

    from vr_data.audio import write_audio
    from vr_data.catalog.manifest import read_manifest, write_manifest
    from vr_data.catalog.scan import ScanOptions, scan
    from vr_data.store.build import build_store
    from vr_data.testing.demo import instrumental_track, vocal_track

    directory = tmp_path_factory.mktemp("many")
    for index in range(24):
        write_audio(directory / "instrumentals" / f"beat_{index:02d}.wav", instrumental_track(1.2, 22050, seed=index), 22050)
    for index in range(6):
        write_audio(directory / "vocals" / f"take_{index:02d}.wav", vocal_track(1.2, 22050, seed=50 + index), 22050)
    manifests = [read_manifest(write_manifest(directory / f"{layout}.jsonl",
                                              scan(directory / layout, ScanOptions(layout=layout, valid_fraction=0.0)).manifest))
                 for layout in ("instrumentals", "vocals")]
    build_store(manifests, directory / "store", stft=STFT, geometry=replace(GEOMETRY, wds_shard_bytes=16 << 20))
    return directory / "store"


def _config(**overrides) -> MixerConfig:
    values = dict(crop_frames=CROP, batch_size=4, seed=11, examples_per_epoch=48)
    values.update(overrides)
    return MixerConfig(**values)


def _batches(loader) -> list[dict]:
    return [{k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()} for batch in loader]


# ---------------------------------------------------------------------------- variety


def test_crop_starts_follow_one_phase_per_epoch_that_changes_between_epochs(store):
    """The crops examples use (plan -> cells) sit on one grid per track and epoch, whose phase is
    drawn again each epoch (so over epochs a track is cut at different places). Each epoch's
    cells still cover the whole track, and its examples use nearly all of them, none twice."""
    dataset = ZarrMixerDataset(store, _config(proportions={"pair": 1.0}, silence_rule="keep", examples_per_epoch=None))
    track = int(np.argmax(dataset.libraries["pair"].frames))
    frames = int(dataset.libraries["pair"].frames[track])
    phases = set()
    for epoch in range(10):
        plan, cells = dataset.plan(epoch), dataset.cells(epoch)["pair"]
        starts = cells.start[cells.track == track]
        covered = np.zeros(frames, bool)
        for start in starts:
            covered[start: start + CROP] = True
        assert covered.all()
        used = [int(cells.start[cell]) for cell in plan.cell if cells.track[cell] == track]
        # The epoch is sized by the cells at phase 0 (rounded down to whole batches); a phase adds
        # at most one cell per track. The cells left over are left out.
        library = dataset.libraries["pair"]
        assert 0 <= len(cells) - nominal_cells(library.frames, CROP) <= len(library.entries)
        assert len(set(used)) == len(used) >= len(starts) - (len(cells) - plan.cell.size)
        # The track's grid cells share one phase this epoch (the head cell at 0 and the tail
        # cell at the end are the exceptions `crop_cells` documents).
        grid = {int(start) % CROP for start in starts if 0 < start < frames - CROP}
        assert len(grid) == 1
        phases |= grid
    # The phase is redrawn every epoch (uniform in [0, CROP)), not fixed: over ten epochs a
    # constant phase would have one value.
    assert len(phases) > 1
    again = ZarrMixerDataset(store, dataset.config)  # a pure function of (seed, epoch)
    assert np.array_equal(again.cells(7)["pair"].start, dataset.cells(7)["pair"].start)
    other_seed = ZarrMixerDataset(store, _config(proportions={"pair": 1.0}, seed=12))
    assert not np.array_equal(other_seed.cells(7)["pair"].start, dataset.cells(7)["pair"].start)


def test_vocal_offsets_are_not_limited_to_chunk_multiples(store):
    dataset = ZarrMixerDataset(store, _config(proportions={"augmented": 1.0}, vocal_probability=1.0,
                                              instrumental_only_probability=0.0, silence_rule="keep"))
    buffers = dataset.new_buffers()
    offsets = []
    for epoch in range(3):
        plan = dataset.plan(epoch)
        for k in range(plan.batches_per_rank):
            recipes, _ = dataset.assemble(plan, k, buffers)
            offsets += [recipe.vocal_pick[1] for recipe in recipes if recipe.has_vocal]
    # Offsets are drawn from every frame, not from the chunk grid: some are off it, and every
    # offset leaves a whole crop in its track.
    assert any(offset % GEOMETRY.chunk_frames for offset in offsets)
    library = dataset.libraries["vocal"]
    picks = [recipe.vocal_pick for recipe in dataset.assemble(dataset.plan(0), 0, buffers)[0] if recipe.has_vocal]
    assert all(0 <= start <= max(int(library.frames[track]) - CROP, 0) for track, start in picks)
    stepped = ZarrMixerDataset(store, _config(proportions={"augmented": 1.0}, vocal_offset_step=8, silence_rule="keep"))
    recipes, _ = stepped.assemble(stepped.plan(0), 0, stepped.new_buffers())
    assert all(recipe.vocal_pick[1] % 8 == 0 for recipe in recipes if recipe.has_vocal)


@pytest.mark.parametrize("frames, crop, segment", [(100, 32, 32), (100, 32, 16), (64, 32, 32), (32, 32, 32),
                                                   (20, 32, 16), (250, 64, 32), (97, 10, 32), (33, 32, 16)])
def test_wds_runs_are_tiled_like_zarr_cells(frames, crop, segment):
    """A run of segments cut into crops as it streams gives exactly `crop_cells`' crops for the
    same phase (starts, lengths and values), whatever the segment length."""
    values = np.arange(frames, dtype=np.float16)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float16)
    for phase in sorted({0, 1, crop // 2, crop - 1}):
        run = _Run("t", crop, phase, ("audio",))
        crops = []
        for first in range(0, frames, segment):
            piece = values[first: first + segment]
            crops += list(run.add({"audio": piece}, piece.shape[0]))
        crops += list(run.finish())
        cells = crop_cells(np.array([frames]), crop, np.array([phase]))
        expected = sorted(int(start) for start in cells.start)
        assert sorted(int(c["audio"][0, 0, 0, 0]) for c, _, _ in crops) == expected
        for arrays, valid, track in crops:
            start = int(arrays["audio"][0, 0, 0, 0])
            assert valid == min(crop, frames - start) and track == "t"
            np.testing.assert_array_equal(arrays["audio"][:valid], values[start: start + valid])
            assert not arrays["audio"][valid:].any()


def _distinct_tracks_per_batch(tracks: list, batch: int) -> float:
    return float(np.mean([len(set(tracks[i: i + batch])) for i in range(0, len(tracks) - batch + 1, batch)]))


def test_wds_batches_mix_about_as_many_tracks_as_zarr(many_tracks):
    """16-crop batches from tracks of about 35 crops each, one tar per track: the Zarr backend's
    batches hold about 12 tracks; the WebDataset stream (16 tars interleaved, 16-crop buffer) comes
    within 20% of it, where one tar at a time with the same buffer held 2-3."""
    config = _config(crop_frames=6, batch_size=16, seed=3, proportions={"augmented": 1.0}, examples_per_epoch=320)
    zarr = ZarrMixerDataset(many_tracks, config)
    plan, cells = zarr.plan(0), zarr.cells(0)["augmented"]
    zarr_tracks = [int(cells.track[plan.cell[i]]) for k in range(plan.batches_per_rank) for i in plan.example_indices(0, k)]
    zarr_mix = _distinct_tracks_per_batch(zarr_tracks, 16)

    def wds_mix(**options) -> float:
        stream = WdsMixerDataset(many_tracks, config, **options)._stream("augmented", 0, 0, 1)
        return _distinct_tracks_per_batch([stream.next()[2] for _ in range(320)], 16)

    interleaved, one_at_a_time = wds_mix(), wds_mix(interleave=1)
    assert zarr_mix > 10
    assert interleaved >= 0.8 * zarr_mix, (interleaved, zarr_mix)
    assert one_at_a_time < 0.3 * zarr_mix, (one_at_a_time, zarr_mix)


def test_wds_ranks_get_equal_batches_disjoint_examples_and_their_own_tars(many_tracks):
    config = _config(crop_frames=16, proportions={"augmented": 1.0}, examples_per_epoch=50)
    indices, shards = [], []
    for rank in range(2):
        dataset = WdsMixerDataset(many_tracks, config, rank=rank, world_size=2)
        batches = _batches(MixerLoader(dataset))
        assert len(batches) == 50 // (4 * 2)
        indices.append([i for batch in batches for i in batch["index"].tolist()])
        shards.append(set(dataset._stream("augmented", 0, 0, 1).shards))
    assert not set(indices[0]) & set(indices[1])
    assert not shards[0] & shards[1]  # each rank streams its own share of the tars
    assert shards[0] | shards[1] == set(dataset._shards("augmented")[0])


def test_wds_silence_rule(store):
    """`count` counts near-silent crops, `keep` never looks, `resample` draws again: fewer
    silent vocal crops reach the examples."""
    base = dict(proportions={"augmented": 1.0}, vocal_probability=1.0, instrumental_only_probability=0.0,
                silence_dbfs=-40.0, examples_per_epoch=80)
    silent = {}
    for rule in ("count", "resample"):
        dataset = WdsMixerDataset(store, _config(silence_rule=rule, max_resamples=6, **base))
        stream = dataset._stream("vocal", 0, 0, 1)
        drawn = [dataset._draw(stream, Recipe("augmented"))[0]["vocal"] for _ in range(80)]
        silent[rule] = sum(dataset.is_silent(vocal) for vocal in drawn)
    assert silent["count"] > 0  # the synthetic vocals have rests
    assert silent["resample"] < silent["count"]
    counted = sum(int(b["silent_crops"]) for b in MixerLoader(WdsMixerDataset(store, _config(silence_rule="count", **base))))
    kept = sum(int(b["silent_crops"]) for b in MixerLoader(WdsMixerDataset(store, _config(silence_rule="keep", **base))))
    assert counted > 0 and kept == 0


# ---------------------------------------------------------------------------- integrity


def test_zarr_mixer_raises_on_a_deleted_shard(store, tmp_path):
    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    for shard in (damaged / "zarr" / "vocal").rglob("c/*/*/*/*"):
        shard.unlink()
    dataset = ZarrMixerDataset(damaged, _config(proportions={"augmented": 1.0}, vocal_probability=1.0,
                                                instrumental_only_probability=0.0))
    with pytest.raises(VRDataError, match=r"zarr/vocal/c/\d+/0/0/0: Zarr shard missing in track \S+ \(array vocal, frames \d+:\d+\)"):
        next(iter(MixerLoader(dataset)))


def test_wds_mixer_raises_on_a_damaged_tar_member(store, tmp_path):
    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    for tar in (damaged / "wds" / "vocal").glob("*.tar"):
        _, offset, size = tar_member_data(tar, ".vocal.npy")
        flip_byte(tar, offset + size // 2)
    dataset = WdsMixerDataset(damaged, _config(proportions={"augmented": 1.0}, vocal_probability=1.0,
                                               instrumental_only_probability=0.0))
    with pytest.raises(VRDataError, match=r"wds/vocal/\S+\.tar: damaged WebDataset shard: member \S+\.vocal\.npy "
                                          r"\(track \S+\) fails its crc32c checksum"):
        next(iter(MixerLoader(dataset)))


def test_mixers_read_a_store_built_before_checksums(store, tmp_path):
    """An old store (no chunk crc32c, zero chunks not stored, no member checksums) opens with a
    notice and gives exactly the batches of the same data in a new store."""
    old = tmp_path / "store"
    shutil.copytree(store, old)
    as_built_before_checksums(old)
    for backend in (ZarrMixerDataset, WdsMixerDataset):
        with pytest.warns(StoreIntegrityWarning):
            dataset = backend(old, _config(examples_per_epoch=16))
        new = _batches(MixerLoader(backend(store, _config(examples_per_epoch=16))))
        for got, want in zip(_batches(MixerLoader(dataset)), new, strict=True):
            assert torch.equal(got["mixture"], want["mixture"]) and torch.equal(got["target"], want["target"])


def test_wds_mixer_refuses_shard_paths_outside_the_store(store, tmp_path):
    for edit in ("absolute", "parent"):
        damaged = tmp_path / edit
        shutil.copytree(store, damaged)
        lines = (damaged / "tracks.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        vocal = next(r for r in records if r["role"] == "vocal")
        real = damaged / "wds" / vocal["wds"]["shards"][0]
        vocal["wds"]["shards"] = [str(real.resolve()) if edit == "absolute" else "../../outside.tar"]
        (damaged / "tracks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        with pytest.raises(VRDataError, match=f"tracks.jsonl: track {vocal['id']}: WebDataset shard .*escapes"):
            WdsMixerDataset(damaged, _config())


# ---------------------------------------------------------------------------- contracts


def test_epoch_length_does_not_depend_on_how_proportions_are_written(store):
    lengths, kinds = set(), []
    for proportions in ({"pair": 0.5, "augmented": 0.5}, {"pair": 1, "augmented": 1}, {"pair": 5, "augmented": 5}):
        dataset = ZarrMixerDataset(store, _config(proportions=proportions, examples_per_epoch=None))
        lengths.add(dataset.examples_per_epoch())
        kinds.append(dataset.plan(0).kinds)
    assert len(lengths) == 1
    assert all(np.array_equal(kinds[0], other) for other in kinds[1:])
    assert normalised_proportions({"pair": 1, "augmented": 3, "pretrain": 0}) == {"pair": 0.25, "augmented": 0.75, "pretrain": 0.0}
    # the epoch is sized so the most-used library's cells (at phase 0) come up about once
    dataset = ZarrMixerDataset(store, _config(proportions={"pair": 1, "augmented": 3}, examples_per_epoch=None))
    pair_cells = int(np.ceil(dataset.libraries["pair"].frames / CROP).sum())
    augmented_cells = int(np.ceil(dataset.libraries["augmented"].frames / CROP).sum())
    assert dataset.examples_per_epoch() == int(np.ceil(max(pair_cells / 0.25, augmented_cells / 0.75)))


@pytest.mark.parametrize("change", [
    {"seed": 12}, {"proportions": {"pair": 0.3, "augmented": 0.7}}, {"proportions": {"pair": 1.0}},
    {"vocal_gain_db": (-3.0, 3.0)}, {"swap_probability": 0.1}, {"mono_probability": 0.5}, {"batch_size": 8},
    {"instrumental_sources": ("instrumental",)}, {"normalisation": "none"}, {"vocal_offset_step": 4},
])
def test_load_state_dict_refuses_another_data_config_naming_the_key(store, change):
    state = json.loads(json.dumps(MixerLoader(ZarrMixerDataset(store, _config())).state_dict()))  # JSON round trip
    loader = MixerLoader(ZarrMixerDataset(store, _config(**change)))
    with pytest.raises(VRDataError, match=f"{next(iter(change))}: saved "):
        loader.load_state_dict(state)


def test_load_state_dict_accepts_a_new_crop_length_and_equal_shares_but_not_another_store(store, tmp_path):
    loader = MixerLoader(ZarrMixerDataset(store, _config()))
    batches = _batches(loader)[:3]
    assert batches
    state = {**loader.state_dict(), "epoch": 0, "batch": 2}
    resumed = MixerLoader(ZarrMixerDataset(store, _config(crop_frames=64, proportions={"pair": 1, "augmented": 1})))
    resumed.load_state_dict(state)  # the curriculum changed the crop; {1, 1} is {.5, .5}
    assert resumed.dataset.config.crop_frames == CROP
    assert torch.equal(next(iter(resumed))["mixture"], batches[2]["mixture"])
    other = tmp_path / "store"
    shutil.copytree(store, other)
    lines = (other / "tracks.jsonl").read_text().splitlines()
    (other / "tracks.jsonl").write_text("\n".join(line for line in lines if '"role": "pretrain"' not in line) + "\n")
    elsewhere = MixerLoader(ZarrMixerDataset(other, _config()))
    with pytest.raises(VRDataError, match="store_id: saved"):
        elsewhere.load_state_dict(state)
    # Another world size is another split of the same examples: the position is the examples consumed.
    two_ranks = {**state, "world_size": 2, "config": {**state["config"], "batch_size": 2}, "batch": 1, "examples": 8}
    elastic = MixerLoader(ZarrMixerDataset(store, _config()))
    elastic.load_state_dict(two_ranks)
    assert elastic.batch == 2


def test_importing_the_mixer_skips_scipy_signal_and_scipy_fft():
    """A spawned DataLoader worker imports `vr_data.mixer`; scipy.signal alone took about 2.3 s
    of it (the STFT module imported it for `StftConfig`)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import vr_data.mixer"],
                            capture_output=True, text=True, check=True)
    loaded = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "vr_data.mixer.zarr_backend" in loaded
    assert not loaded & {"scipy.signal", "scipy.fft", "vr_data.store.build", "vr_data.stats"}


@pytest.mark.slow
def test_readme_python_example_runs_as_a_script(store, tmp_path):
    """The README's mixer example, with its `if __name__ == "__main__":` guard, runs as a script
    with spawned workers (without the guard each worker would rerun the script and fail)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "MixerLoader" in block)
    assert 'if __name__ == "__main__":' in example
    script = tmp_path / "example.py"
    script.write_text(example.replace('"/data/store"', repr(str(store))).replace("...", "print(tuple(batch['mixture'].shape))"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() and all(line.startswith("(8, 2, ") for line in result.stdout.splitlines())

