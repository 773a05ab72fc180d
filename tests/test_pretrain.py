"""Denoising pretraining and frozen-encoder finetuning through the trainer, on a small real store:
the pretraining loss falls, checkpoints record the objective and the linear head, a resume in
the middle of pretraining is exact, finetuning from a denoising checkpoint loads every shared
tensor and reports the head as new, frozen encoders stay bit-identical, unfreezing resumes
exactly, and the CLI's shortcuts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from test_build_support import GEOMETRY, STFT, write_corpus
from vr_data.audio import write_audio
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.errors import VRDataError
from vr_data.store.build import build_store
from vr_data.testing.demo import instrumental_track
from vr_model.network.checkpoint import list_checkpoints, load_model, read_checkpoint_json, resolve_checkpoint
from vr_model.train import load_config, train
from vr_model.train.build import build_model, init_from_checkpoint
from vr_model.train.runlog import read_metrics
from vr_model.train.state import load_training_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["model.preset=tiny", "model.overrides.bins=256", "model.overrides.channels=[4, 4, 6, 6, 8]",
        "train.threads=1", "data.workers=0", "log.every=1", "log.tensorboard=false", "train.warmup_steps=2",
        "train.lr=3e-3", "train.min_lr=1e-4", "validation.every=0", "checkpoint.every=1000", "checkpoint.keep=100",
        "mixer.silence_rule=keep"]


def config(*overrides: str, stages=((32, 4, 1, 6),)):
    curriculum = ", ".join(f"{{crop_frames={c}, batch_size={b}, accumulation={a}, steps={s}}}" for c, b, a, s in stages)
    return load_config(None, [*TINY, f"curriculum=[{curriculum}]", *overrides])


def pretrain(*overrides: str, stages=((32, 4, 1, 6),)):
    return config("train.objective=denoise", *overrides, stages=stages)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Pairs, vocals, instrumentals and four pretraining tracks, all in the train split."""
    directory = tmp_path_factory.mktemp("pretrain")
    roots = write_corpus(directory / "audio")
    for index in range(1, 4):
        write_audio(roots["pretrain"] / f"radio_{index}.flac", instrumental_track(2.5, 44100, seed=40 + index), 44100)
    manifests = []
    for layout, root in roots.items():
        path = write_manifest(directory / f"{layout}.jsonl", scan(root, ScanOptions(layout=layout, valid_fraction=0.0)).manifest)
        manifests.append(read_manifest(path))
    build_store(manifests, directory / "store", stft=STFT, geometry=GEOMETRY)
    return directory / "store"


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("kind") == "train" and r["loss"] is not None}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


@pytest.fixture(scope="module")
def pretrained(store, tmp_path_factory) -> Path:
    """A denoising run of 12 steps; its last checkpoint."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    train(store, run, pretrain(stages=((32, 4, 1, 12),)))
    return resolve_checkpoint(run, "latest")


def test_denoising_pretraining_loss_falls_and_checkpoints_record_objective_and_linear_head(store, pretrained):
    run = pretrained.parent.parent
    losses = [loss for _, loss in sorted(step_losses(run).items())]
    assert len(losses) == 12
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    document = read_checkpoint_json(pretrained)
    assert document["extra"]["objective"] == "denoise" and document["model"]["head"] == "linear"
    assert document["extra"]["mixer"]["proportions"] == {"pair": 0.0, "augmented": 0.0, "pretrain": 1.0}
    assert document["extra"]["train"]["denoise"]["loss"] == "l2"
    assert load_model(pretrained).config.head == "linear"


def test_a_resume_in_the_middle_of_pretraining_is_exact(store, tmp_path):
    """8 denoising steps over two stages with dropout and an EMA, resumed from step 3: the same
    per-step losses, weights and EMA, bit for bit (the noise is keyed on each example)."""
    stages = ((32, 4, 1, 4), (64, 2, 2, 4))
    full = tmp_path / "full"
    train(store, full, pretrain("checkpoint.every=1", "model.overrides.dropout=0.2",
                                "denoise.gamma=[0.9, 0.99]", stages=stages))
    expected = step_losses(full)
    assert sorted(expected) == list(range(1, 9))
    copy = tmp_path / "resumed"
    shutil.copytree(full, copy)
    for directory in list_checkpoints(copy / "checkpoints"):
        if int(directory.name.split("-")[1]) > 3:
            shutil.rmtree(directory)
    summary = train(store, copy, None, resume=True)
    assert summary.steps_this_run == 5
    assert step_losses(copy) == expected
    last, reference = copy / "checkpoints" / "step-00000008", full / "checkpoints" / "step-00000008"
    for name in ("model.safetensors", "ema.safetensors"):
        assert (last / name).read_bytes() == (reference / name).read_bytes(), name


def test_finetuning_from_a_denoising_checkpoint_loads_every_shared_tensor_and_reports_the_head_as_new(
        store, pretrained, tmp_path):
    model = build_model(config().model_config(), seed=5)
    with pytest.raises(VRDataError, match=r"head \('linear' there, 'mask' here\)"):
        init_from_checkpoint(model, pretrained)
    report = init_from_checkpoint(model, pretrained, partial=True)
    source = weights(pretrained)
    assert report.new_head == ("out.bias", "out.weight") and report.head == "linear -> mask"
    assert report.loaded == sorted(set(source) - {"out.bias", "out.weight"})
    assert report.missing == [] and report.unexpected == []
    for name in report.loaded:
        assert torch.equal(model.state_dict()[name], source[name]), name
    assert not torch.equal(model.out.weight, source["out.weight"])   # the fresh init of seed 5

    run = tmp_path / "finetune"
    summary = train(store, run, config("train.freeze=encoders", stages=((32, 4, 1, 4),)), init=pretrained,
                    init_partial=True)
    log = (run / "train.log").read_text()
    assert "new head (linear -> mask): out.bias, out.weight" in log
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert f"{model.num_parameters() - encoder:,} trainable, {encoder:,} frozen parameters (encoders frozen)" in log
    finetuned = weights(summary.last_checkpoint)
    encoder_names = [name for name in finetuned if name.startswith("encoder.")]
    assert encoder_names and all(torch.equal(finetuned[name], source[name]) for name in encoder_names)
    assert all(not torch.equal(finetuned[name], source[name]) for name in finetuned
               if name.startswith("decoder.") and name.endswith(".weight"))
    document = read_checkpoint_json(summary.last_checkpoint)
    assert document["model"]["head"] == "mask" and document["extra"]["objective"] == "supervised"
    optimizer = load_training_state(summary.last_checkpoint).optimizer
    in_optimizer = sum(len(group["params"]) for group in optimizer["param_groups"])
    assert in_optimizer == len([name for name in finetuned if not name.startswith("encoder.")])


def test_unfreezing_after_steps_trains_the_encoders_and_resumes_exactly(store, pretrained, tmp_path):
    """Frozen for steps 1-3, unfrozen from step 4; resumed from step 3 (before the unfreeze)
    and from step 5 (after it): the same losses and weights as the uninterrupted run."""
    full = tmp_path / "full"
    settings = config("train.freeze=encoders", "train.unfreeze_after=3", "checkpoint.every=1",
                      stages=((32, 4, 1, 6),))
    train(store, full, settings, init=pretrained, init_partial=True)
    log = (full / "train.log").read_text()
    assert "(encoders frozen for steps 1-3)" in log and "step 4: encoders unfrozen" in log
    source = weights(pretrained)
    at = {step: weights(full / "checkpoints" / f"step-{step:08d}") for step in (3, 6)}
    assert all(torch.equal(at[3][name], source[name]) for name in at[3] if name.startswith("encoder."))
    assert any(not torch.equal(at[6][name], source[name]) for name in at[6] if name.startswith("encoder."))
    assert len(load_training_state(full / "checkpoints" / "step-00000003").optimizer["param_groups"]) == 2
    assert len(load_training_state(full / "checkpoints" / "step-00000004").optimizer["param_groups"]) == 4
    expected = step_losses(full)
    for resume_step in (3, 5):
        copy = tmp_path / f"from-{resume_step}"
        shutil.copytree(full, copy)
        for directory in list_checkpoints(copy / "checkpoints"):
            if int(directory.name.split("-")[1]) > resume_step:
                shutil.rmtree(directory)
        train(store, copy, None, resume=True)
        assert step_losses(copy) == expected
        assert (copy / "checkpoints" / "step-00000006" / "model.safetensors").read_bytes() == \
            (full / "checkpoints" / "step-00000006" / "model.safetensors").read_bytes()


def test_config_ties_the_head_to_the_objective():
    assert pretrain().model_config().head == "linear" and config().model_config().head == "mask"
    with pytest.raises(VRDataError, match="contradicts train.objective"):
        config("train.objective=denoise", "model.overrides.head=mask")
    with pytest.raises(VRDataError, match=r"config key denoise\.gamma"):
        pretrain("denoise.gamma=[0.99, 0.9]")
    with pytest.raises(VRDataError, match=r"config key train\.freeze: input should be 'none' or 'encoders'"):
        config("train.freeze=decoders")
    explicit = pretrain("mixer.proportions={pair = 0.5, augmented = 0.0, pretrain = 0.5}")
    assert explicit.mixer.proportions == {"pair": 0.5, "augmented": 0.0, "pretrain": 0.5}


def test_cli_pretrains_then_finetunes_with_frozen_encoders(store, tmp_path):
    from pipelines.vrtrain import app

    runner = CliRunner()
    sets = [item for value in TINY + ["curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=2}]"]
            for item in ("--set", value)]
    result = runner.invoke(app, ["run", "--store", str(store), "--out", str(tmp_path / "pre"), "--objective", "denoise",
                                 *sets])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "pre").config.head == "linear"
    result = runner.invoke(app, ["run", "--store", str(store), "--out", str(tmp_path / "fine"), "--init",
                                 str(tmp_path / "pre"), "--init-partial", "--freeze", "encoders",
                                 "--unfreeze-after", "1", *sets])
    assert result.exit_code == 0, result.output
    saved = load_config(tmp_path / "fine" / "config.toml")
    assert saved.train.freeze == "encoders" and saved.train.unfreeze_after == 1
    assert "step 2: encoders unfrozen" in (tmp_path / "fine" / "train.log").read_text()
    lone = runner.invoke(app, ["run", "--store", str(store), "--out", str(tmp_path / "x"), "--init-partial"])
    assert lone.exit_code == 2 and "--init-partial goes with --init" in lone.output
