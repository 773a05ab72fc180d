"""The streaming mixer over a real (small) store: exact mixing, determinism, ranks, resume,
both backends, the curriculum crop change, silence rules and corrupt data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_build_support import GEOMETRY, STFT, chunk_spans, flip_byte, write_corpus
from vr_data.store.build import build_store
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset
from vr_data.mixer.config import draw_recipe
from vr_data.mixer.wds_backend import WdsMixerDataset
from vr_data.mixer.kernels import complex_from_stored
from vr_data.mixer.preview import preview_examples
from vr_data.mixer.sampling import KINDS
from vr_data.catalog.scan import ScanOptions, scan

CROP = 32


@pytest.fixture
def store(mixer_store) -> Path:
    """The session's mixer store (tests/conftest.py): 3 pairs, 3 vocals, 2 instrumentals, 1
    pretraining track, all in train."""
    return mixer_store


def _config(**overrides) -> MixerConfig:
    values = dict(crop_frames=CROP, batch_size=4, seed=11, examples_per_epoch=48)
    values.update(overrides)
    return MixerConfig(**values)


def _batches(loader, count=None):
    out = []
    for batch in loader:
        out.append(batch)
        if count is not None and len(out) == count:
            break
    return out


def _same(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        for key in ("mixture", "target", "valid", "kind", "index", "scale"):
            assert torch.equal(a[key], b[key]), key


def test_batch_format(store):
    dataset = ZarrMixerDataset(store, _config())
    batch = dataset.example_batch(0, 0)
    assert batch["mixture"].shape == batch["target"].shape == (4, 2, STFT.bins, CROP)
    assert batch["mixture"].dtype == torch.float32 and batch["valid"].shape == (4, CROP)
    assert batch["normalisation"] == "crop_max"
    assert float(batch["mixture"].max()) <= 1.0 and float(batch["target"].max()) <= 1.0
    assert torch.allclose(batch["mixture"].amax(dim=(1, 2, 3)), torch.ones(4))  # divided by the crop's own max


def test_augmented_examples_are_exact_complex_mixes(store):
    """mixture - gain * vocal == instrumental, in the complex domain, and the training magnitudes
    are the magnitudes of exactly that mixture."""
    config = _config(proportions={"augmented": 1.0}, mono_probability=0.0, instrumental_only_probability=0.0,
                     vocal_probability=1.0, normalisation="none", silence_rule="keep")
    dataset = ZarrMixerDataset(store, config)
    plan = dataset.plan(0)
    buffers = dataset.new_buffers()
    recipes, _ = dataset.assemble(plan, 0, buffers)
    batch = dataset.example_batch(0, 0)
    examples = preview_examples(dataset, 4)
    for j, (recipe, example) in enumerate(zip(recipes, examples)):
        instrumental = complex_from_stored(buffers.main[j])
        vocal = complex_from_stored(buffers.vocal[j])
        if recipe.swap_main:
            instrumental = instrumental[::-1]
        if recipe.swap_vocal:
            vocal = vocal[::-1]
        gain = np.asarray(recipe.vocal_gain, np.float32)[:, None, None]
        valid = recipe.valid
        np.testing.assert_allclose(example["mixture"] - gain * vocal[:, :, :valid], instrumental[:, :, :valid], atol=1e-3)
        np.testing.assert_allclose(example["target"], instrumental[:, :, :valid], atol=1e-6)
        np.testing.assert_allclose(batch["mixture"][j].numpy()[:, :, :valid], np.abs(example["mixture"]), rtol=1e-4, atol=1e-4)


def test_pair_examples_are_aligned_store_crops(store):
    dataset = ZarrMixerDataset(store, _config(proportions={"pair": 1.0}, normalisation="none", mono_probability=0.0,
                                              instrumental_only_probability=0.0, silence_rule="keep"))
    plan = dataset.plan(0)
    cells = dataset.cells()["pair"]
    batch = dataset.example_batch(0, 1)
    for j, index in enumerate(batch["index"].tolist()):
        cell = int(plan.cell[index])
        track, _ = dataset.libraries["pair"].entries[int(cells.track[cell])]
        start = int(cells.start[cell])
        stop = min(start + CROP, track.frames)
        mixture = np.abs(dataset.store.read_spectrogram(track, "mixture", start, stop))
        target = np.abs(dataset.store.read_spectrogram(track, "instrumental", start, stop))
        got_mixture = batch["mixture"][j].numpy()[:, :, : stop - start]
        got_target = batch["target"][j].numpy()[:, :, : stop - start]
        if not np.allclose(got_mixture, mixture, rtol=1e-5, atol=1e-5):  # left/right swapped
            mixture, target = mixture[::-1], target[::-1]
        np.testing.assert_allclose(got_mixture, mixture, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_target, target, rtol=1e-5, atol=1e-5)


def test_defaults_reproduce_the_seed_recipe_rates(store):
    dataset = ZarrMixerDataset(store, _config(proportions={"augmented": 1.0}))
    rng = np.random.default_rng(0)
    recipes = [draw_recipe(dataset.config, rng, "augmented") for _ in range(20000)]
    vocal = np.mean([r.has_vocal for r in recipes])
    assert abs(vocal - 0.98 * 0.975) < 0.01  # a vocal 98% of the time, unless instrumental-only (2.5%)
    assert abs(np.mean([r.swap_main for r in recipes]) - 0.5) < 0.02
    assert abs(np.mean([r.instrumental_only for r in recipes]) - 0.025) < 0.005
    dropped = np.mean([0.0 in r.vocal_gain for r in recipes if r.has_vocal])
    assert abs(dropped - 0.025) < 0.005
    gains_db = [20 * np.log10(abs(r.vocal_gain[0])) for r in recipes if r.has_vocal and 0.0 not in r.vocal_gain]
    assert -6.0 - 1e-6 <= min(gains_db) and max(gains_db) <= 3.0 + 1e-6


def test_batches_do_not_depend_on_the_number_of_workers(store):
    config = _config()
    reference = _batches(MixerLoader(ZarrMixerDataset(store, config), num_workers=0))
    with_workers = _batches(MixerLoader(ZarrMixerDataset(store, config), num_workers=2))
    _same(reference, with_workers)
    again = _batches(MixerLoader(ZarrMixerDataset(store, config), num_workers=0))
    _same(reference, again)
    other_seed = _batches(MixerLoader(ZarrMixerDataset(store, _config(seed=12)), num_workers=0))
    assert not torch.equal(reference[0]["mixture"], other_seed[0]["mixture"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_equal_batches_and_disjoint_examples(store, world_size):
    config = _config(examples_per_epoch=50)
    per_rank = []
    for rank in range(world_size):
        loader = MixerLoader(ZarrMixerDataset(store, config, rank=rank, world_size=world_size))
        per_rank.append([i for batch in loader for i in batch["index"].tolist()])
    assert len({len(indices) for indices in per_rank}) == 1
    assert len(per_rank[0]) == (50 // (4 * world_size)) * 4
    everything = [i for indices in per_rank for i in indices]
    assert len(everything) == len(set(everything))


def test_no_crop_cell_is_used_twice_in_an_epoch(store):
    dataset = ZarrMixerDataset(store, _config(proportions={"pair": 1.0}, silence_rule="keep", examples_per_epoch=16))
    cells = dataset.cells()["pair"]
    assert len(cells) >= 16
    used = []
    for rank in range(2):
        per_rank = ZarrMixerDataset(store, dataset.config, rank=rank, world_size=2)
        plan = per_rank.plan(0)
        for k in range(plan.batches_per_rank):
            used += [int(plan.cell[i]) for i in plan.example_indices(rank, k)]
    assert len(used) == len(set(used)) == 16


@pytest.mark.parametrize("backend", [ZarrMixerDataset, WdsMixerDataset])
def test_resume_mid_epoch_gives_the_next_100_examples_exactly(store, backend):
    config = _config(examples_per_epoch=40)  # 10 batches per epoch: 25 batches cross two epochs
    uninterrupted = MixerLoader(backend(store, config))
    stream = []
    while len(stream) < 32:
        stream += _batches(uninterrupted)
    interrupted = MixerLoader(backend(store, config))
    _batches(interrupted, 7)
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 7)
    resumed = MixerLoader(backend(store, config))
    resumed.load_state_dict(state)
    after = []
    while len(after) < 25:
        after += _batches(resumed)
    _same(stream[7:32], after[:25])  # 25 batches of 4 = the next 100 examples


def test_wds_resume_with_workers(store):
    config = _config(examples_per_epoch=40)
    reference = MixerLoader(WdsMixerDataset(store, config), num_workers=2)
    first = _batches(reference)
    state = {**reference.state_dict(), "epoch": 0, "batch": 3}  # as saved after 3 batches
    resumed = MixerLoader(WdsMixerDataset(store, config), num_workers=2)
    resumed.load_state_dict(state)
    _same(first[3:], _batches(resumed))


def _recording(backend):
    """`backend` that records each example's random choices (its recipe without the crops) as it
    finishes a batch."""

    class Recording(backend):
        def finish_batch(self, buffers, recipes, indices, epoch, k):
            for index, recipe in zip(indices, recipes):
                self.choices[int(index)] = (recipe.kind, recipe.swap_main, recipe.mono, recipe.instrumental_only,
                                            recipe.has_vocal, recipe.swap_vocal, recipe.vocal_gain)
            return super().finish_batch(buffers, recipes, indices, epoch, k)

    return Recording


def test_both_backends_give_the_same_format_kinds_and_recipes(store):
    """Same batch format, kinds and example indices, and every example's random choices (swaps,
    mono, instrumental-only, vocal or not, vocal gains) are the same in both backends; only the
    crops differ."""
    config = _config(mono_probability=0.3, vocal_probability=0.5, instrumental_only_probability=0.2)
    datasets = {backend: _recording(backend)(store, config) for backend in (ZarrMixerDataset, WdsMixerDataset)}
    batches = {}
    for backend, dataset in datasets.items():
        dataset.choices = {}
        batches[backend] = _batches(MixerLoader(dataset))
    zarr_batches, wds_batches = batches[ZarrMixerDataset], batches[WdsMixerDataset]
    assert len(zarr_batches) == len(wds_batches) == 12
    for zarr_batch, wds_batch in zip(zarr_batches, wds_batches):
        for key in ("mixture", "target", "valid", "kind", "index", "scale"):
            assert zarr_batch[key].shape == wds_batch[key].shape and zarr_batch[key].dtype == wds_batch[key].dtype
        assert torch.equal(zarr_batch["kind"], wds_batch["kind"]) and torch.equal(zarr_batch["index"], wds_batch["index"])
        for name in ("mixture", "target"):
            assert 0 < float(wds_batch[name].max()) <= 1.0
    zarr_choices, wds_choices = datasets[ZarrMixerDataset].choices, datasets[WdsMixerDataset].choices
    assert sorted(zarr_choices) == list(range(48))
    assert zarr_choices == wds_choices
    # the comparison covers both outcomes of every choice
    for field in range(1, 5):
        assert {choice[field] for choice in zarr_choices.values()} == {False, True}
    assert {choice[0] for choice in zarr_choices.values()} == {"pair", "augmented"}


@pytest.mark.parametrize("backend", [ZarrMixerDataset, WdsMixerDataset])
def test_curriculum_crop_change_pads_and_masks(store, backend):
    loader = MixerLoader(backend(store, _config(proportions={"augmented": 1.0}, silence_rule="keep")))
    first = _batches(loader, 2)
    assert first[0]["mixture"].shape[-1] == CROP
    long_crop = 512  # longer than every track of the corpus (at most about 3.5 s = 600 frames)
    loader.set_crop_frames(long_crop)
    later = _batches(loader)
    assert later and all(batch["mixture"].shape[-1] == long_crop for batch in later)
    valid = torch.cat([batch["valid"] for batch in later])
    assert (~valid).any()  # some tracks are shorter than the crop
    for batch in later:
        for j in range(batch["valid"].shape[0]):
            length = int(batch["valid"][j].sum())
            assert torch.all(batch["valid"][j, :length]) and not torch.any(batch["valid"][j, length:])
            assert torch.all(batch["mixture"][j, :, :, length:] == 0) and torch.all(batch["target"][j, :, :, length:] == 0)


def test_silence_rule_resample_reduces_silent_vocals(store):
    base = dict(proportions={"augmented": 1.0}, vocal_probability=1.0, instrumental_only_probability=0.0,
                examples_per_epoch=80, silence_dbfs=-40.0)
    counted = sum(int(b["silent_crops"]) for b in MixerLoader(ZarrMixerDataset(store, _config(silence_rule="count", **base))))
    dataset = ZarrMixerDataset(store, _config(silence_rule="resample", max_resamples=6, **base))
    buffers = dataset.new_buffers()
    still_silent = 0
    for k in range(dataset.batches_per_rank()):
        recipes, _ = dataset.assemble(dataset.plan(0), k, buffers)
        still_silent += sum(dataset.is_silent(buffers.vocal[j]) for j in range(len(recipes)))
    assert counted > 0  # the synthetic vocals have rests
    assert still_silent < counted


def test_zarr_mixer_raises_naming_the_damaged_track_and_shard(store, tmp_path):
    """One flipped byte in every stored vocal chunk: the first batch with a vocal raises a
    VRDataError naming a vocal track and the shard file of that track that failed its checksum."""
    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    shards = sorted((damaged / "zarr" / "vocal").rglob("c/*/*/*/*"))
    assert shards
    for shard in shards:
        for offset, size in chunk_spans(shard):
            flip_byte(shard, offset + size // 2)
    dataset = ZarrMixerDataset(damaged, _config(proportions={"augmented": 1.0}, vocal_probability=1.0,
                                                instrumental_only_probability=0.0))
    with pytest.raises(VRDataError, match="checksum") as raised:
        for batch in MixerLoader(dataset):
            pass
    message = str(raised.value)
    named = [t for t in dataset.store.tracks_by_role("vocal") if f"track {t.id} " in message]
    assert len(named) == 1
    track = named[0]
    owned = range(track.zarr_start // GEOMETRY.shard_frames, (track.zarr_start + track.frames - 1) // GEOMETRY.shard_frames + 1)
    assert any(message.startswith(str(damaged / "zarr" / "vocal" / "c" / str(index) / "0" / "0" / "0")) for index in owned)


def test_corrupt_tar_names_the_shard(store, tmp_path):
    damaged = tmp_path / "store"
    shutil.copytree(store, damaged)
    tars = sorted((damaged / "wds").rglob("*.tar"))
    for tar in tars:
        data = bytearray(tar.read_bytes())
        data[100:200] = b"\x00" * 100  # inside the first member's header
        tar.write_bytes(bytes(data))
    with pytest.raises(VRDataError, match=r"\.tar"):
        for batch in MixerLoader(WdsMixerDataset(damaged, _config())):
            pass


def test_missing_vocals_for_augmented_mixes_is_a_clear_error(store):
    with pytest.raises(VRDataError, match="vocal"):
        ZarrMixerDataset(store, _config(split="valid", proportions={"augmented": 1.0}))


def test_preview_mix_cli_writes_wavs_and_a_sheet(store, tmp_path):
    from pipelines.vrdata import app

    result = CliRunner().invoke(app, ["preview-mix", str(store), "--n", "3", "--out", str(tmp_path / "preview"),
                                      "--crop-frames", "64"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "preview").iterdir())
    assert "sheet.png" in written and len([n for n in written if n.endswith(".wav")]) == 9
    kinds = {name.split("_")[1] for name in written if name.endswith(".wav")}
    assert kinds <= set(KINDS)


def test_preview_mix_records_each_example_as_the_training_ledger_does(store, tmp_path):
    """examples.jsonl: per example, its number and the ledger's record (tracks, offsets, gains),
    which equals the record a training batch of the same epoch carries for that index."""
    from pipelines.vrdata import app

    result = CliRunner().invoke(app, ["preview-mix", str(store), "--n", "3", "--out", str(tmp_path / "preview"),
                                      "--crop-frames", "64", "--seed", "4"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "preview" / "examples.jsonl").read_text().splitlines()]
    assert [r.pop("number") for r in records] == [0, 1, 2]
    dataset = ZarrMixerDataset(store, MixerConfig(crop_frames=64, batch_size=3, seed=4, examples_per_epoch=16,
                                                  proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0}))
    dataset.records = True
    assert records == dataset.example_batch(0, 0)["examples"]
    for record in records:
        assert f"{record['tracks'][0]}@{record['frames'][0]}" in result.output


@pytest.mark.parametrize("workers", [0, 2])
def test_reused_outputs_give_the_same_batches(store, workers):
    """`reuse_outputs=True` (with workers: the setting the benchmarks recommend): a consumer that is
    done with each batch before asking for the next gets exactly the batches of fresh outputs."""
    config = _config()
    fresh = [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()}
             for b in MixerLoader(ZarrMixerDataset(store, config))]
    reused = []
    loader = MixerLoader(ZarrMixerDataset(store, config), num_workers=workers, reuse_outputs=True)
    for _ in range(2):  # two epochs on the same workers: the ring wraps many times
        for batch in loader:
            reused.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})  # done before the next
    assert len(reused) == 2 * len(fresh)
    _same(fresh, reused[: len(fresh)])
    assert not torch.equal(reused[0]["mixture"], reused[len(fresh)]["mixture"])  # epoch 1 is another epoch


def test_zarr_only_store(tmp_path):
    """--no-wds: no tars, verify still reads every frame, the Zarr mixer works, WebDataset refuses."""
    from vr_data.store import open_store
    from vr_data.store.plan import Geometry
    from vr_data.store.verify import verify_store

    roots = write_corpus(tmp_path / "audio")
    manifests = [read_manifest(write_manifest(tmp_path / f"{layout}.jsonl",
                                              scan(root, ScanOptions(layout=layout, valid_fraction=0.0)).manifest))
                 for layout, root in roots.items()]
    geometry = Geometry(chunk_frames=32, shard_frames=128, segment_frames=32, wds=False)
    build_store(manifests, tmp_path / "store", stft=STFT, geometry=geometry)
    assert not list((tmp_path / "store" / "wds").rglob("*.tar"))
    store = open_store(tmp_path / "store")
    assert store.geometry.wds is False and all(track.segments == 0 for track in store.tracks)
    assert verify_store(tmp_path / "store").ok
    batch = next(iter(MixerLoader(ZarrMixerDataset(tmp_path / "store", _config()))))
    assert batch["mixture"].shape == (4, 2, STFT.bins, CROP)
    with pytest.raises(VRDataError, match="without WebDataset"):
        WdsMixerDataset(tmp_path / "store", _config())
    # resuming or appending keeps the store's choice: asking for tars now is a conflict
    with pytest.raises(VRDataError):
        build_store(manifests, tmp_path / "store", geometry=Geometry(chunk_frames=32, shard_frames=128, segment_frames=32))


def test_build_shards_cli_no_wds(tmp_path):
    from pipelines.vrdata import app
    from vr_data.store import open_store

    roots = write_corpus(tmp_path / "audio")
    path = write_manifest(tmp_path / "vocals.jsonl", scan(roots["vocals"], ScanOptions(layout="vocals")).manifest)
    runner = CliRunner()
    result = runner.invoke(app, ["build-shards", str(path), "--out", str(tmp_path / "store"), "--no-wds", "--workers", "0",
                                 "--n-fft", "512", "--hop-length", "256", "--chunk-frames", "32", "--shard-frames", "128",
                                 "--segment-frames", "32"])
    assert result.exit_code == 0, result.output
    assert open_store(tmp_path / "store").geometry.wds is False
    verified = runner.invoke(app, ["verify", str(tmp_path / "store")])
    assert verified.exit_code == 0, verified.output


def test_stats_normalisation_divides_each_bin_by_the_dataset_scale(store, tmp_path):
    from vr_data.store.normalisation import load_normalisation
    from vr_data.stats.report import describe

    stats_store = tmp_path / "store"
    shutil.copytree(store, stats_store)
    with pytest.raises(VRDataError, match="vrdata stats"):
        ZarrMixerDataset(stats_store, _config(normalisation="stats"))
    describe([stats_store], content=True)  # writes STORE/stats.json
    mean, _ = load_normalisation(stats_store, "pair")
    raw = ZarrMixerDataset(stats_store, _config(normalisation="none")).example_batch(0, 0)
    scaled = ZarrMixerDataset(stats_store, _config(normalisation="stats")).example_batch(0, 0)
    factor = torch.from_numpy(np.exp(-mean))[None, None, :, None]
    torch.testing.assert_close(scaled["mixture"], raw["mixture"] * factor, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scaled["target"], raw["target"] * factor, rtol=1e-5, atol=1e-7)
    assert scaled["normalisation"] == "stats"


def test_compressed_wds_members_give_the_same_stream(store, tmp_path):
    """--wds-compression blosc-lz4: smaller tars, verify passes, every sample equals the
    uncompressed store's, and the WebDataset mixer reads it."""
    from vr_data.store.plan import Geometry
    from vr_data.store.verify import verify_store

    compressed = tmp_path / "store"
    manifests = [read_manifest(Path(ref["path"])) for ref in json.loads((store / "plan.json").read_text())["manifests"]]
    geometry = Geometry(chunk_frames=32, shard_frames=128, segment_frames=32, wds_shard_bytes=GEOMETRY.wds_shard_bytes,
                        wds_compression="blosc-lz4")
    build_store(manifests, compressed, stft=STFT, geometry=geometry)
    plain_bytes = sum(p.stat().st_size for p in (store / "wds").rglob("*.tar"))
    compressed_bytes = sum(p.stat().st_size for p in (compressed / "wds").rglob("*.tar"))
    assert compressed_bytes < 0.7 * plain_bytes
    assert any(".npy.blosc" in name for name in _tar_names(compressed))
    assert verify_store(compressed).ok
    from vr_data.store import iter_wds_samples, open_store

    for role in ("pair", "vocal", "instrumental", "pretrain"):
        plain = {s["__key__"]: s for s in iter_wds_samples(open_store(store), role)}
        packed = {s["__key__"]: s for s in iter_wds_samples(open_store(compressed), role)}
        assert plain.keys() == packed.keys() and plain
        for key, sample in plain.items():
            for source in sample:
                if source not in ("__key__", "json"):
                    np.testing.assert_array_equal(sample[source], packed[key][source])
    batch = _batches(MixerLoader(WdsMixerDataset(compressed, _config(examples_per_epoch=8))))[0]
    assert batch["mixture"].shape == (4, 2, STFT.bins, CROP)


def _tar_names(store_path: Path) -> list[str]:
    import tarfile

    names = []
    for tar in (store_path / "wds").rglob("*.tar"):
        with tarfile.open(tar) as archive:
            names += archive.getnames()
    return names


def test_musdb_vocal_stems_join_the_vocal_library(tmp_path):
    """A MUSDB pair also becomes a vocal track (its vocals stem): built, verified, mixed."""
    from conftest import tone
    from vr_data.audio import write_audio
    from vr_data.store import open_store
    from vr_data.store.plan import DERIVED_VOCAL_SUFFIX, Geometry
    from vr_data.store.verify import verify_store
    from vr_data.testing.demo import instrumental_track, vocal_track

    for index, name in enumerate(("A - One", "B - Two")):
        track = tmp_path / "musdb" / "train" / name
        stems = {"vocals": vocal_track(2.5, 44100, seed=index), "drums": instrumental_track(2.5, 44100, seed=index) * 0.5,
                 "bass": tone(2.5, seed=index) * 0.5, "other": instrumental_track(2.5, 44100, seed=10 + index) * 0.3}
        stems["mixture"] = sum(stems.values())
        for stem, audio in stems.items():
            write_audio(track / f"{stem}.wav", audio, 44100, subtype="FLOAT")
    manifest = read_manifest(write_manifest(tmp_path / "musdb.jsonl",
                                            scan(tmp_path / "musdb", ScanOptions(layout="musdb")).manifest))
    geometry = Geometry(chunk_frames=32, shard_frames=128, segment_frames=32)
    build_store([manifest], tmp_path / "store", stft=STFT, geometry=geometry)
    store = open_store(tmp_path / "store")
    vocals = store.tracks_by_role("vocal")
    assert sorted(t.id for t in vocals) == sorted(i.id + DERIVED_VOCAL_SUFFIX for i in manifest.items)
    assert verify_store(tmp_path / "store").ok
    item = manifest.items[0]
    pair = store.track(item.id)
    vocal = store.track(item.id + DERIVED_VOCAL_SUFFIX)
    assert vocal.frames == pair.frames
    # the stored vocal is mixture - instrumental, to float16 storage precision
    mixture = store.read_spectrogram(pair, "mixture")
    instrumental = store.read_spectrogram(pair, "instrumental")
    stored_vocal = store.read_spectrogram(vocal, "vocal")
    assert np.abs(mixture - instrumental - stored_vocal).max() < 0.02 * np.abs(mixture).max()
    batch = next(iter(MixerLoader(ZarrMixerDataset(tmp_path / "store", _config(proportions={"augmented": 1.0})))))
    assert batch["mixture"].shape == (4, 2, STFT.bins, CROP)
    # rebuilding with the same manifest finds everything done
    again = build_store([manifest], tmp_path / "store", stft=STFT, geometry=geometry)
    assert again.already_complete


def test_a_mixer_batch_trains_the_frame_primer(store, one_torch_thread):
    """vr_data -> vr_model: a mixer batch goes through a (narrow) frame primer U-Net with
    frame_mask = ~valid; padded frames do not change the real frames' mask; a loss step works."""
    from dataclasses import replace

    from vr_model import build_model, get_config

    torch.manual_seed(0)
    config = replace(get_config("tiny"), bins=STFT.bins - 1, max_frames=64)
    model = build_model(config)
    dataset = ZarrMixerDataset(store, _config(proportions={"augmented": 1.0}, crop_frames=64, silence_rule="keep"))
    batch = dataset.example_batch(0, 0)
    mask = model(batch["mixture"], frame_mask=~batch["valid"])
    assert mask.shape == batch["mixture"].shape and 0 <= float(mask.detach().min()) <= float(mask.detach().max()) <= 1
    valid = batch["valid"][:, None, None, :]
    loss = ((mask * batch["mixture"] - batch["target"]).abs() * valid).sum() / valid.sum().clamp(min=1)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # 40 real frames padded to the 64-frame crop, as the mixer pads a short track, give the same
    # mask on the real frames as the 40 frames alone
    real = batch["mixture"][:1, ..., :40]
    padded_input = torch.nn.functional.pad(real, (0, 24))
    padding = torch.arange(64)[None, :] >= 40
    with torch.no_grad():
        padded = model(padded_input, frame_mask=padding)[..., :40]
        alone = model(real)
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)
