"""The documented recipes (`recipes/*.toml`): valid configs that `vrtrain run --config` runs,
and the ones the benchmark and the docs say they are."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vr_model.network.presets import get_config
from vr_model.train import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["cpu-smoke.toml", "gpu-curriculum.toml"])
def test_every_recipe_is_a_valid_config_whose_crops_fit_its_model(name):
    config = load_config(RECIPES / name)
    max_frames = get_config(config.model.preset).max_frames
    assert all(stage.crop_frames <= max_frames for stage in config.curriculum)
    assert config.train.warmup_steps < sum(stage.steps for stage in config.curriculum)


def test_gpu_recipe_is_the_seeds_curriculum_at_one_global_batch():
    config = load_config(RECIPES / "gpu-curriculum.toml")
    assert config.model.preset == "frame-primer"
    assert [stage.crop_frames for stage in config.curriculum] == [512, 1024, 2048]
    assert {stage.batch_size * stage.accumulation for stage in config.curriculum} == {16}


def test_the_quality_benchmark_trains_with_the_cpu_smoke_recipe():
    sys.path.insert(0, str(RECIPES.parent / "benchmarks"))
    import bench_quality

    recipe = load_config(RECIPES / "cpu-smoke.toml")
    assert bench_quality.RECIPE_FILE == RECIPES / "cpu-smoke.toml"
    config = bench_quality.run_config(bench_quality.recipe_stage(), 50, 1, [], curve_every=20)
    assert config.model.to_dict() == recipe.model.to_dict()
    assert config.train.lr == recipe.train.lr and config.train.ema_decay == recipe.train.ema_decay
    stage = config.curriculum[0]
    assert (stage.crop_frames, stage.batch_size, stage.steps) == (64, 4, 50)
    assert (config.checkpoint.every, config.checkpoint.keep) == (20, 3)  # steps 20, 40 and 50


def test_vrtrain_run_trains_with_the_cpu_smoke_recipe(built_store, tmp_path):
    from pipelines.vrtrain import app

    # The tests' store has n_fft 512 (256 bins + Nyquist): the model is told so, nothing else.
    sets = ["model.overrides.bins=256", "train.threads=1", "data.workers=0", "log.tensorboard=false", "train.warmup_steps=1",
            "curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=2}]"]
    result = CliRunner().invoke(app, ["run", "--store", str(built_store), "--out", str(tmp_path / "run"),
                                      "--config", str(RECIPES / "cpu-smoke.toml"),
                                      *[item for value in sets for item in ("--set", value)]])
    assert result.exit_code == 0, result.output
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved.model.preset == "tiny" and saved.train.lr == 1e-2
