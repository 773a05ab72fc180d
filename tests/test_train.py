"""The trainer on a small real store: config, schedule, loss, a falling loss, exact resume,
checkpoints (EMA, loader state, best, atomicity), --init, non-finite steps, refusals, the CLI,
and the normalisation parity between a training batch and the inference path."""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_build_support import GEOMETRY, STFT, load, scan_corpus, write_corpus
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.errors import VRDataError
from vr_data.mixer import MixerConfig, ZarrMixerDataset
from vr_data.store.build import build_store
from vr_model.network.checkpoint import (
    checkpoint_normalisation, list_checkpoints, load_model, read_checkpoint_json, resolve_checkpoint, save_checkpoint,
)
from vr_model.inference.masking import CropMasker, TorchMaskNetwork
from vr_data.mixer.normalisation import InputNormalisation
from vr_model.train import OBJECTIVES, LossTerms, TrainingStopped, dump_config, learning_rate, load_config, train
from vr_model.train.build import ExponentialMovingAverage, build_model, rank_batching
from vr_model.train.config import Stage, config_from_dict
from vr_model.train.objectives import masked_error, supervised_loss
from vr_model.train.runlog import read_metrics
from vr_model.train.state import load_training_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A small model on the tests' STFT (n_fft 512: 256 bins + Nyquist); primers on the 3 coarsest levels.
TINY = ["model.preset=tiny", "model.overrides.bins=256", "model.overrides.channels=[4, 4, 6, 6, 8]",
        "train.threads=1", "data.workers=0", "log.every=1", "log.tensorboard=false", "train.warmup_steps=2",
        "train.lr=3e-3", "train.min_lr=1e-4", "validation.every=0", "checkpoint.every=1000", "checkpoint.keep=100"]


def config(*overrides: str, stages=((32, 4, 1, 6),)):
    curriculum = ", ".join(f"{{crop_frames={c}, batch_size={b}, accumulation={a}, steps={s}}}" for c, b, a, s in stages)
    return load_config(None, [*TINY, f"curriculum=[{curriculum}]", *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Pairs, vocals, instrumentals; train and valid splits (one valid pair)."""
    directory = tmp_path_factory.mktemp("train")
    manifests = scan_corpus(write_corpus(directory / "audio"), directory / "manifests")
    build_store(load(manifests), directory / "store", stft=STFT, geometry=GEOMETRY)
    return directory / "store"


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("kind") == "train" and r["loss"] is not None}


# -- schedule, config, batching, loss: pure functions ----------------------------------------------
def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    rate = lambda step, decay="polynomial", power=1.0: learning_rate(step, 110, 1e-3, 1e-5, 10, decay, power)  # noqa: E731
    assert rate(1) == pytest.approx(1e-4) and rate(5) == pytest.approx(5e-4) and rate(10) == pytest.approx(1e-3)
    assert rate(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)            # linear decay half way
    assert rate(60, power=2.0) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.25)
    assert rate(60, "cosine") == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert rate(35, "cosine") == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2)
    assert rate(110) == rate(500) == 1e-5
    decaying = [rate(step) for step in range(10, 111)]
    assert all(later < earlier for earlier, later in zip(decaying, decaying[1:]))


def test_config_text_has_a_comment_per_key_and_reads_back_unchanged():
    original = config("train.lr=2.5e-4", "mixer.vocal_gain_db=[-3, 1.5]", "model.overrides.dropout=0.05")
    text = dump_config(original)
    assert load_config(None, []).to_dict() == config_from_dict(tomllib.loads(dump_config(load_config()))).to_dict()
    assert config_from_dict(tomllib.loads(text)).to_dict() == original.to_dict()
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if " = " in line and not line.startswith("#") and "[[" not in line:
            commented = lines[number - 1].startswith("# ") or "  # " in line
            assert commented, f"no comment for {line!r}"


@pytest.mark.parametrize("override, named", [
    ("train.lrr=1", "train.lrr"), ("trian.lr=1", "trian"), ("mixer.sead=1", "mixer.sead"),
    ("curriculum.0.crop=3", "curriculum.0.crop"), ("curriculum.5.steps=3", "curriculum.5"),
    ("model.overrides.chanels=[1]", "model.overrides.chanels"), ("train.lr.x=1", "train.lr.x"),
])
def test_unknown_keys_are_errors_that_name_the_key(override, named):
    with pytest.raises(VRDataError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_override_values_are_type_checked():
    with pytest.raises(VRDataError, match=r"config key train\.lr: input should be a valid number"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(VRDataError, match=r"config key train\.decay: input should be 'polynomial' or 'cosine'"):
        load_config(None, ["train.decay=linear"])
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0          # an int where a float goes


def test_per_rank_batch_keeps_the_global_batch():
    assert rank_batching(Stage(64, 8, 2, 1), 1) == (8, 2)
    assert rank_batching(Stage(64, 8, 2, 1), 2) == (4, 2)
    assert rank_batching(Stage(64, 1, 16, 1), 8) == (1, 2)    # 1 x 16 over 8 ranks: 1 x 2 each
    assert rank_batching(Stage(64, 2, 4, 1), 8) == (1, 1)
    with pytest.raises(VRDataError, match="cannot be split"):
        rank_batching(Stage(64, 3, 1, 1), 2)


def test_loss_counts_valid_frames_only():
    generator = torch.Generator().manual_seed(0)
    mask, mixture, target = torch.rand(3, 2, 2, 9, 12, generator=generator)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 7:] = False
    garbage = target.clone()
    garbage[1, ..., 7:] = 1e6                                  # padding: whatever it holds never counts
    expected = torch.cat([(mask[0] * mixture[0] - target[0]).abs().flatten(),
                          (mask[1, ..., :7] * mixture[1, ..., :7] - target[1, ..., :7]).abs().flatten()]).mean()
    torch.testing.assert_close(supervised_loss(mask, mixture, garbage, valid), expected)
    terms = masked_error(mask * mixture, garbage, valid, "l2")
    assert terms.count.item() == (12 + 7) * 2 * 9
    torch.testing.assert_close(terms.error_sum / terms.count, torch.cat([
        (mask[0] * mixture[0] - target[0]).square().flatten(),
        (mask[1, ..., :7] * mixture[1, ..., :7] - target[1, ..., :7]).square().flatten()]).mean())


def test_ema_follows_the_weights_with_a_warming_decay():
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, decay=0.9)
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)                      # first update: decay min(0.9, 2/11)
    torch.testing.assert_close(ema.state_dict()["weight"], start["weight"] + (1 - 2 / 11))


# -- training on the store -------------------------------------------------------------------------
def test_loss_falls_on_a_small_store(store, tmp_path):
    summary = train(store, tmp_path / "run", config("validation.every=10", stages=((32, 4, 1, 30),)))
    losses = [loss for _, loss in summary.losses]
    assert len(losses) == 30 and summary.nonfinite_steps == 0
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    valid = [r["valid_loss"] for r in read_metrics(tmp_path / "run") if r.get("kind") == "valid"]
    assert len(valid) == 3 and valid[-1] < valid[0]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert summary.best_valid_loss == min(valid)


def test_resume_from_a_checkpoint_continues_bit_for_bit_across_a_stage_boundary(store, tmp_path):
    """8 steps in two stages (32 frames x 4, then 64 frames x 2 x 2 accumulation) with dropout
    and an EMA; resumed from step 3 (mid-stage) and from step 4 (the stage's end): the same
    losses, weights, EMA and loader positions as the uninterrupted run."""
    stages = ((32, 4, 1, 4), (64, 2, 2, 4))
    full = tmp_path / "full"
    train(store, full, config("checkpoint.every=1", "model.overrides.dropout=0.2", stages=stages))
    expected = step_losses(full)
    assert sorted(expected) == list(range(1, 9))
    for resume_step in (3, 4):
        copy = tmp_path / f"from-{resume_step}"
        shutil.copytree(full, copy)
        for directory in list_checkpoints(copy / "checkpoints"):
            if int(directory.name.split("-")[1]) > resume_step:
                shutil.rmtree(directory)
        summary = train(store, copy, None, resume=True)
        assert summary.steps_this_run == 8 - resume_step
        assert step_losses(copy) == expected                  # exact float equality, every step
        last, reference = copy / "checkpoints" / "step-00000008", full / "checkpoints" / "step-00000008"
        for name in ("model.safetensors", "ema.safetensors"):
            assert (last / name).read_bytes() == (reference / name).read_bytes(), name
        assert load_training_state(last).loaders == load_training_state(reference).loaders


def test_checkpoints_record_the_run_and_round_trip_ema_and_loader_state(store, tmp_path):
    run = tmp_path / "run"
    train(store, run, config("checkpoint.every=2", "checkpoint.keep=2", "validation.every=3", "log.tensorboard=true",
                             stages=((32, 4, 1, 6),)))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    names = [path.name for path in list_checkpoints(run / "checkpoints")]
    best = json.loads((run / "checkpoints" / "best").read_text())
    assert names[-2:] == ["step-00000004", "step-00000006"] and best["checkpoint"] in names
    assert len(names) == 2 + (best["checkpoint"] not in ("step-00000004", "step-00000006"))
    assert resolve_checkpoint(run, "latest") == run / "checkpoints" / "step-00000006"
    assert resolve_checkpoint(run, "best") == run / "checkpoints" / best["checkpoint"]

    extra = read_checkpoint_json(resolve_checkpoint(run, "latest"))["extra"]
    assert {"normalisation", "stft", "store_id", "mixer", "train", "step", "stage", "objective"} <= set(extra)
    assert extra["stft"]["n_fft"] == 512 and extra["step"] == 6 and extra["objective"] == "supervised"
    assert checkpoint_normalisation(run) == InputNormalisation("crop_max")

    latest = resolve_checkpoint(run, "latest")
    ema, raw = load_model(latest, weights="ema"), load_model(latest, weights="raw")
    assert not torch.equal(ema.out.weight, raw.out.weight)
    state = load_training_state(latest)
    assert state.step == 6 and state.counters["ema_updates"] == 6
    mixer = MixerConfig.from_dict(state.loaders[0]["config"])
    assert mixer.crop_frames == 32 and mixer.batch_size == 4
    per_epoch = ZarrMixerDataset(store, mixer).batches_per_rank()
    assert state.loaders[0]["epoch"] * per_epoch + state.loaders[0]["batch"] == 6   # six batches consumed
    assert set(state.optimizer) == {"state", "param_groups"} and "torch" in state.rng[0]
    # A save killed midway leaves a dot-directory: never listed, removed by the next run.
    (run / "checkpoints" / ".step-00000008.abc").mkdir()
    assert resolve_checkpoint(run, "latest").name == "step-00000006"


def test_init_refuses_another_model_config_and_init_partial_loads_what_matches(store, tmp_path):
    other = build_model(config("model.overrides.channels=[4, 4, 6, 6, 10]").model_config(), seed=3)
    save_checkpoint(tmp_path / "other", other)
    with pytest.raises(VRDataError, match=r"channels \(\[4, 4, 6, 6, 10\] there, \[4, 4, 6, 6, 8\] here\)"):
        train(store, tmp_path / "run", config(stages=((32, 4, 1, 1),)), init=tmp_path / "other")
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")
    summary = train(store, tmp_path / "partial", config("train.lr=1e-12", "train.min_lr=0", "train.ema_decay=0",
                                                        stages=((32, 4, 1, 1),)), init=tmp_path / "other", init_partial=True)
    log = (tmp_path / "partial" / "train.log").read_text()
    assert "not loaded:" in log and "encoder.4" in log
    loaded = load_model(summary.last_checkpoint)
    torch.testing.assert_close(loaded.encoder[0].blocks[0].conv1.conv.weight, other.encoder[0].blocks[0].conv1.conv.weight,
                               rtol=0, atol=1e-9)


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_after_k_in_a_row(store, tmp_path, monkeypatch):
    supervised = OBJECTIVES["supervised"]

    def poisoned(model, batch, cfg, context):
        terms = supervised(model, batch, cfg, context)
        if context.step in (2,) or context.step >= 5:
            return LossTerms(terms.error_sum * float("nan"), terms.count)
        return terms

    monkeypatch.setitem(OBJECTIVES, "poisoned", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row at step 7"):
        train(store, run, config("train.objective=poisoned", "train.max_nonfinite=3", "checkpoint.every=1",
                                 stages=((32, 4, 1, 20),)))
    log = (run / "train.log").read_text()
    assert "step 2: non-finite loss" in log and "(1 in a row, 1 in total)" in log
    assert "(3 in a row, 4 in total)" in log
    assert sorted(step_losses(run)) == [1, 3, 4]               # skipped steps log no loss
    state = load_training_state(resolve_checkpoint(run, "latest"))
    assert state.step == 7 and state.counters["nonfinite_steps"] == 4
    # A skipped step leaves the weights (and the EMA) alone.
    weights = {path.name: {name: (path / name).read_bytes() for name in ("model.safetensors", "ema.safetensors")}
               for path in list_checkpoints(run / "checkpoints")}
    assert weights["step-00000002"] == weights["step-00000001"] != weights["step-00000003"]
    assert weights["step-00000004"] == weights["step-00000005"] == weights["step-00000007"]


def test_a_store_with_another_stft_is_refused_before_the_first_step(store, tmp_path):
    with pytest.raises(VRDataError, match=r"store STFT \(n_fft 512, 257 bins\) does not match the model \(1025 bins"):
        train(store, tmp_path / "run", config("model.overrides.bins=1024"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_run_config_and_resume(store, tmp_path):
    from pipelines.vrtrain import app

    runner = CliRunner()
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0 and tomllib.loads(result.output)["train"]["lr"] == 1e-4
    args = ["run", "--store", str(store), "--out", str(tmp_path / "run")]
    sets = [item for value in TINY + ["curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=2}]"]
            for item in ("--set", value)]
    result = runner.invoke(app, args + sets)
    assert result.exit_code == 0, result.output
    assert "done: step 2" in result.output
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved.to_dict() == config(stages=((32, 4, 1, 2),)).to_dict()
    again = runner.invoke(app, args + sets)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, ["run", "--resume", str(tmp_path / "run")])
    assert resumed.exit_code == 0 and "done: step 2, 0 steps" in resumed.output
    bad = runner.invoke(app, ["run", "--store", str(store), "--out", str(tmp_path / "x"), "--set", "train.lrr=1"])
    assert bad.exit_code == 2 and "unknown config key train.lrr" in bad.output


def _pair_batch_crops(store, normalisation, crop_frames: int = 32):
    """A mixer batch of pair crops (no augmentation) and, per example, the stored complex
    spectrogram of the same crop (what `vrtrain separate` would compute from its audio)."""
    recipe = dict(crop_frames=crop_frames, batch_size=4, seed=3, proportions={"pair": 1.0}, swap_probability=0.0,
                  mono_probability=0.0, instrumental_only_probability=0.0, silence_rule="keep")
    dataset = ZarrMixerDataset(store, MixerConfig(**recipe, normalisation=normalisation.kind))
    batch = dataset.example_batch(0, 0)
    plan, cells = dataset.plan(0), dataset.cells()["pair"]
    spectrograms = []
    for index in batch["index"].tolist():
        cell = int(plan.cell[index])
        track, _ = dataset.libraries["pair"].entries[int(cells.track[cell])]
        start = int(cells.start[cell])
        spectrograms.append(dataset.store.read_spectrogram(track, "mixture", start,
                                                           min(start + crop_frames, track.frames)))
    return batch, spectrograms


class _RecordingNetwork:
    """A mask network that records what it is given (the model's input) and masks nothing."""

    def __init__(self, channels: int, bins: int, max_frames: int):
        self.channels, self.bins, self.max_frames = channels, bins, max_frames
        self.inputs: list[torch.Tensor] = []

    def __call__(self, magnitude: torch.Tensor) -> torch.Tensor:
        self.inputs.append(magnitude.clone())
        return torch.ones_like(magnitude)


def test_a_training_batch_and_the_separation_path_give_the_model_the_same_input(store):
    """The mixer's crop_max batch and the separation path's crop (`CropMasker`, the path
    `vrtrain separate` runs) scale the same audio crop with the same `InputNormalisation`."""
    normalisation = InputNormalisation("crop_max")
    batch, spectrograms = _pair_batch_crops(store, normalisation)
    for j, spectrogram in enumerate(spectrograms):
        channels, bins, frames = spectrogram.shape
        network = _RecordingNetwork(channels, bins, 32)
        masker = CropMasker(network, normalisation, crop_frames=32, overlap=0.25)
        masker.push(spectrogram)
        masker.finish()
        assert len(network.inputs) == 1 and network.inputs[0].shape == (1, channels, bins, frames)
        # The magnitudes come from two kernels (the mixer's numba sqrt, numpy's abs): equal to
        # float32 rounding; the scaling itself is the same operation.
        torch.testing.assert_close(network.inputs[0][0], batch["mixture"][j, ..., :frames], rtol=1e-6, atol=1e-7)
        assert float(network.inputs[0].max()) == 1.0 == float(batch["mixture"][j].max())


def test_a_training_crop_and_the_inference_path_get_the_same_mask(store, tmp_path):
    """The mixer's crop_max batch through the model (training) and the raw spectrogram of the same
    crop through `CropMasker` with the checkpoint's normalisation (inference) agree."""
    run = tmp_path / "run"
    train(store, run, config(stages=((32, 4, 1, 2),)))
    model = load_model(run, weights="raw")
    normalisation = checkpoint_normalisation(run)
    batch, spectrograms = _pair_batch_crops(store, normalisation)
    with torch.inference_mode():
        training_masks = model(batch["mixture"], frame_mask=~batch["valid"])
    for j, spectrogram in enumerate(spectrograms):
        masker = CropMasker(TorchMaskNetwork(model), normalisation, crop_frames=32)
        instrumental = np.concatenate([masker.push(spectrogram), masker.finish()], axis=-1)
        frames = spectrogram.shape[-1]
        mask = torch.from_numpy(np.abs(instrumental) / np.maximum(np.abs(spectrogram), 1e-30))
        nonzero = torch.from_numpy(np.abs(spectrogram) > 1e-6)
        torch.testing.assert_close(mask[nonzero], training_masks[j, ..., :frames][nonzero], rtol=1e-4, atol=2e-5)


def test_a_store_without_valid_items_trains_with_a_notice_and_no_validation(tmp_path):
    roots = write_corpus(tmp_path / "audio")
    manifests = []
    for layout in ("pairs", "vocals"):
        result = scan(roots[layout], ScanOptions(layout=layout, valid_fraction=0.0))
        manifests.append(read_manifest(write_manifest(tmp_path / f"{layout}.jsonl", result.manifest)))
    build_store(manifests, tmp_path / "store", stft=STFT, geometry=GEOMETRY)
    summary = train(tmp_path / "store", tmp_path / "run", config("validation.every=1", stages=((32, 4, 1, 2),)))
    assert summary.steps == 2 and summary.best_valid_loss is None
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the store has no valid items" in log and "valid loss" not in log
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()
    assert resolve_checkpoint(tmp_path / "run", "best").name == "step-00000002"   # best falls back to latest
