"""`vrtrain separate`, `vrtrain eval` and `vrtrain export` end to end on small checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from test_separate_support import SMALL_CROPS, identity_model, random_model, song, write_checkpoint
from pipelines.vrtrain import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "step-00000001", identity_model())


def test_a_bad_file_among_good_ones_fails_alone(checkpoint, tmp_path):
    songs = tmp_path / "songs"
    (songs / "sub").mkdir(parents=True)
    sf.write(songs / "good.wav", song(1.0, 44100, 2).T, 44100)
    sf.write(songs / "sub" / "mono.flac", song(0.8, 22050, 1).T, 22050)
    (songs / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "out"
    result = runner.invoke(app, ["separate", str(songs), str(tmp_path / "absent.mp3"), "--checkpoint", str(checkpoint),
                                 "--out", str(out), *SMALL_CROPS], env={"COLUMNS": "80"})
    assert result.exit_code == 1, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "good_instrumental.wav", "good_vocals.wav", "sub", "sub/mono_instrumental.wav", "sub/mono_vocals.wav"]
    assert sf.info(out / "sub" / "mono_vocals.wav").channels == 1
    assert sf.info(out / "good_instrumental.wav").subtype == "PCM_24"
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("broken.wav: cannot decode audio" in line for line in errors)
    assert "separated 2 song(s)" in result.output and "2 failed:" in result.output
    assert "absent.mp3: file not found" in result.output


def test_skip_existing_and_refused_options(checkpoint, tmp_path):
    sf.write(tmp_path / "a.wav", song(0.5, 44100, 2).T, 44100)
    arguments = ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                 *SMALL_CROPS]
    assert runner.invoke(app, arguments).exit_code == 0
    again = runner.invoke(app, [*arguments, "--skip-existing"])
    assert again.exit_code == 0 and "skipped 1 already done" in again.output
    refused = runner.invoke(app, [*arguments, "--format", "flac", "--subtype", "FLOAT"])
    assert refused.exit_code == 2 and "flac files cannot hold FLOAT" in refused.output
    no_model = runner.invoke(app, ["separate", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out")])
    assert no_model.exit_code == 2 and "--checkpoint" in no_model.output


def test_export_then_separate_through_onnxruntime(tmp_path):
    model = random_model(6)
    checkpoint = write_checkpoint(tmp_path / "ckpt", model)
    onnx = tmp_path / "model.onnx"
    exported = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--onnx", str(onnx)])
    assert exported.exit_code == 0, exported.output
    difference = float(exported.output.split("max abs difference")[1].split()[0])
    assert difference <= 1e-4
    audio = song(0.9, 48000, 2)
    sf.write(tmp_path / "s.wav", audio.T, 48000, subtype="FLOAT")
    for flag, folder in (("--checkpoint", "torch"), ("--onnx", "onnx")):
        model_path = checkpoint if flag == "--checkpoint" else onnx
        result = runner.invoke(app, ["separate", str(tmp_path / "s.wav"), flag, str(model_path), "--out",
                                     str(tmp_path / folder), "--subtype", "FLOAT", *SMALL_CROPS])
        assert result.exit_code == 0, result.output
    through_torch, rate = sf.read(tmp_path / "torch" / "s_instrumental.wav")
    through_onnx, _ = sf.read(tmp_path / "onnx" / "s_instrumental.wav")
    assert rate == 48000 and through_torch.shape == audio.T.shape
    np.testing.assert_allclose(through_onnx, through_torch, rtol=0, atol=1e-4)


def test_eval_writes_the_table_json_and_a_plot_per_track(checkpoint, corpus, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--manifest", str(corpus["pairs"]),
                                 "--split", "train", "--limit", "1", "--out", str(out), *SMALL_CROPS],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    document = json.loads((out / "eval.json").read_text())
    assert len(document["tracks"]) == 1 and document["split"] == "train"
    track = document["tracks"][0]
    # The identity checkpoint returns the mixture: its instrumental scores are the floor's.
    assert track["model"]["instrumental_sdr"] == pytest.approx(track["floor"]["instrumental_sdr"], abs=0.01)
    assert track["ceiling"]["instrumental_sdr"] > track["floor"]["instrumental_sdr"]
    assert set(document["median"]) == {"model", "floor", "ceiling"}
    assert (out / "plots" / f"{track['id']}.png").stat().st_size > 1000
    assert "global SDR (MDX)" in result.output and "BSSEval v4 SDR" in result.output and "median" in result.output
    table_lines = result.output[result.output.index("global SDR (MDX)"): result.output.index("median instrumental")]
    assert max(len(line.rstrip()) for line in table_lines.splitlines()) <= 80
    missing = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--manifest", str(corpus["pairs"]),
                                  "--split", "test", "--out", str(out)])
    assert missing.exit_code == 2 and "no pairs in split 'test'" in missing.output


def test_a_training_run_logs_validation_sdr_and_eval_of_the_run_agrees(built_store, corpus, tmp_path):
    """`vrtrain run` with validation.sdr_songs logs the store-side SDR; `vrtrain eval` of the run
    directory (its best checkpoint) decodes the same valid song and finds the same number, up
    to the store codec's error."""
    from vr_model.train.runlog import read_metrics

    settings = ["model.preset=tiny", "model.overrides.bins=256", "model.overrides.channels=[4, 4, 6, 6, 8]",
                "train.threads=1", "data.workers=0", "log.tensorboard=false", "train.warmup_steps=1",
                "validation.every=2", "validation.sdr_songs=1", "checkpoint.every=1000",
                "curriculum=[{crop_frames=32, batch_size=2, accumulation=1, steps=2}]"]
    run = runner.invoke(app, ["run", "--store", str(built_store), "--out", str(tmp_path / "run"),
                              *[item for value in settings for item in ("--set", value)]])
    assert run.exit_code == 0, run.output
    assert "SDR" in run.output and "(floor" in run.output
    valid = [record for record in read_metrics(tmp_path / "run") if record.get("kind") == "valid"][-1]
    assert valid["valid_sdr_songs"] == 1 and valid["valid_sdr_floor"] < valid["valid_sdr_ceiling"]
    result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "run"), "--manifest", str(corpus["pairs"]),
                                 "--split", "valid", "--out", str(tmp_path / "eval"), "--no-plots"])
    assert result.exit_code == 0, result.output
    median = json.loads((tmp_path / "eval" / "eval.json").read_text())["median"]
    assert median["model"]["instrumental"]["sdr"] == pytest.approx(valid["valid_sdr"], abs=0.05)
    assert median["floor"]["instrumental"]["sdr"] == pytest.approx(valid["valid_sdr_floor"], abs=0.05)
    assert median["ceiling"]["instrumental"]["sdr"] == pytest.approx(valid["valid_sdr_ceiling"], abs=0.05)
