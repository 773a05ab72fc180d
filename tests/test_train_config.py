"""`vrtrain config` / the run config: every bound a key declares is refused in one line with exit
code 2 naming the key (so a value `vrtrain config` accepts is one `vrtrain run` can run), the
file must be UTF-8, warnings are comments, and the printed TOML reads back unchanged."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from pipelines.vrtrain import app
from vr_data.errors import ConfigError
from vr_model.train.config import (
    MixerSection, TrainConfig, batch_buffer_bytes, config_from_dict, dump_config, load_config,
)

runner = CliRunner()


def config_cli(*args: str):
    return runner.invoke(app, ["config", *args])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("override, named, allowed", [
    ("train.device=tpu", "train.device", "auto, cpu, cuda or cuda:N"),
    ("train.device=cuda:x", "train.device", "auto, cpu, cuda or cuda:N"),
    ("data.workers=-1", "data.workers", "greater than or equal to 0"),
    ("model.overrides.channels=[0,0,0,0,0]", "model.overrides.channels", "integers > 0"),
    ("mixer.vocal_gain_db=[3.0,-6.0]", "mixer.vocal_gain_db", "low <= high"),
    ("denoise.gamma=[0.9,0.5]", "denoise.gamma", "low <= high"),
    ("mixer.proportions.pair=-1.0", "mixer.proportions.pair", "greater than or equal to 0"),
    ("mixer.proportions={pair=0.0, augmented=0.0, pretrain=0.0}", "mixer.proportions", "positive sum"),
    ("mixer.swap_probability=1.5", "mixer.swap_probability", "less than or equal to 1"),
    ("mixer.vocal_probability=-0.1", "mixer.vocal_probability", "greater than or equal to 0"),
    ("curriculum.0.crop_frames=4096", "curriculum.0.crop_frames", "max_frames 2048"),
    ("validation.crop_frames=4096", "validation.crop_frames", "max_frames 2048"),
    ("checkpoint.every_minutes=-1", "checkpoint.every_minutes", "greater than or equal to 0"),
    ("train.min_lr=1.0", "train.min_lr", "<= train.lr"),
    ("train.lr=nan", "train.lr", "finite"),
    ("train.ema_decay=1.0", "train.ema_decay", "less than 1"),
    ("mixer.pretrain_sources=[]", "mixer.pretrain_sources", "at least 1"),
    ("curriculum.0.batch_size=100000000", "curriculum.0.batch_size", "TiB of loader buffers"),
])
def test_each_bound_is_one_line_naming_the_key_and_exit_2(override, named, allowed):
    line = one_error_line(config_cli("--set", override))
    assert f"config key {named}:" in line and allowed in line


def test_a_non_utf8_config_file_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"[train]\nlr = 1e-4 # \xe9t\xe9\n")
    line = one_error_line(config_cli("--config", str(path)))
    assert str(path) in line and "not a UTF-8 text file" in line


def test_a_config_that_is_a_directory_is_one_line_and_exit_2(tmp_path):
    line = one_error_line(config_cli("--config", str(tmp_path)))
    assert "is a directory" in line


def test_the_batch_memory_estimate_counts_every_buffer():
    config = load_config(None, ["data.workers=2", "data.prefetch_factor=3"])
    stage = config.curriculum[0]     # 512 frames, batch 4
    crops = 3 * 4 * 512 * 2 * 2 * 1025 * 2
    outputs = (3 + 2) * 2 * 4 * 2 * 1025 * 512 * 4
    assert batch_buffer_bytes(config, stage, 1025) == 2 * (crops + outputs)


def test_warmup_longer_than_the_run_is_a_comment_in_the_printed_config():
    result = config_cli("--set", "curriculum=[{crop_frames=64, batch_size=2, accumulation=1, steps=200}]")
    assert result.exit_code == 0
    assert "# warning: train.warmup_steps 1000 is more than the run's 200 steps" in result.output
    tomllib.loads(result.output)  # still a valid config


def test_the_printed_config_reads_back_unchanged_with_every_section():
    original = load_config(None, ["train.objective=denoise", "checkpoint.every_minutes=2.5",
                                  "model.overrides.channels=[8, 8, 12, 12, 16]"])
    again = config_from_dict(tomllib.loads(dump_config(original)))
    assert again.to_dict() == original.to_dict() == load_config(None, []).to_dict() | again.to_dict()
    assert again.mixer.proportions == {"pair": 0.0, "augmented": 0.0, "pretrain": 1.0}  # denoise's default kinds


def test_the_mixer_section_covers_every_mixer_option():
    from vr_data.mixer import MixerConfig

    assert set(MixerSection.model_fields) == set(MixerConfig.__dataclass_fields__) - {"crop_frames", "batch_size",
                                                                                     "split"}


def test_appending_a_stage_with_set_copies_the_last_one():
    config = load_config(None, ["curriculum.3.steps=40"])
    assert len(config.curriculum) == 4 and config.curriculum[3].steps == 40
    assert config.curriculum[3].crop_frames == config.curriculum[2].crop_frames


def test_a_bool_is_not_a_number_and_an_int_is_a_float():
    with pytest.raises(ConfigError, match="config key train.lr: input should be a valid number"):
        load_config(None, ["train.lr=true"])
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    assert TrainConfig().to_dict() == load_config().to_dict()
