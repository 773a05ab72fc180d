"""Every output the commands write goes through `vr_data.io`: a symlink to a device or a FIFO,
a `/dev/stdout`-like path or a folder is refused and left as it was, `-` streams where a command
offers it. Inference outputs (separated audio, eval JSON and plots, ONNX) through the CLI;
vrdata's (JSON reports, preview audio and sheets, stats plots) through the functions its
commands call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from test_separate_support import SMALL_CROPS, identity_model, random_model, song, write_checkpoint
from pipelines.vrtrain import app
from vr_data.errors import VRDataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


@pytest.fixture
def targets(tmp_path) -> dict[str, Path]:
    """A FIFO and symlinks to it and to /dev/null: what a replacing write would destroy."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    to_fifo, to_null = tmp_path / "to_fifo", tmp_path / "to_null"
    to_fifo.symlink_to(fifo)
    to_null.symlink_to("/dev/null")
    return {"fifo": fifo, "to_fifo": to_fifo, "to_null": to_null}


def untouched(targets: dict[str, Path]) -> bool:
    import stat

    return (stat.S_ISFIFO(os.lstat(targets["fifo"]).st_mode) and targets["to_fifo"].is_symlink()
            and os.readlink(targets["to_null"]) == "/dev/null")


def test_separated_audio_is_never_written_over_a_link_to_a_fifo_or_a_device(tmp_path, targets):
    checkpoint = write_checkpoint(tmp_path / "ckpt", identity_model())
    sf.write(tmp_path / "a.wav", song(0.3, 44100, 2).T, 44100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_instrumental.wav").symlink_to(targets["fifo"])
    (out / "a_vocals.wav").symlink_to("/dev/null")
    result = runner.invoke(app, ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(checkpoint),
                                 "--out", str(out), *SMALL_CROPS])
    assert result.exit_code == 1 and "refusing to replace it" in result.output
    assert untouched(targets) and (out / "a_instrumental.wav").is_symlink() and (out / "a_vocals.wav").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["a_instrumental.wav", "a_vocals.wav"]   # no temporary left
    for folder in ("/dev/stdout", str(targets["to_null"])):
        refused = runner.invoke(app, ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(checkpoint),
                                      "--out", folder, *SMALL_CROPS])
        assert refused.exit_code == 2 and "separated 0 song" not in refused.output, refused.output
        assert "names a device" in refused.output or "is not a folder (a character device)" in refused.output
    assert untouched(targets)


def test_eval_json_and_plots_are_never_written_over_a_link_to_a_fifo_or_a_device(tmp_path, corpus, targets):
    checkpoint = write_checkpoint(tmp_path / "ckpt", identity_model())
    arguments = ["eval", "--checkpoint", str(checkpoint), "--manifest", str(corpus["pairs"]), "--split", "train",
                 "--limit", "1", *SMALL_CROPS]
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").symlink_to(targets["fifo"])
    result = runner.invoke(app, [*arguments, "--out", str(out), "--no-plots"])
    assert result.exit_code == 2 and "eval.json" in result.output and "refusing to replace it" in result.output
    assert untouched(targets) and (out / "eval.json").is_symlink()
    # A plot's name taken by a link to /dev/null: refused, the link kept.
    plots = tmp_path / "eval2" / "plots"
    plots.mkdir(parents=True)
    ok = runner.invoke(app, [*arguments, "--out", str(tmp_path / "eval3")])
    assert ok.exit_code == 0, ok.output
    plot_name = next((tmp_path / "eval3" / "plots").iterdir()).name
    (plots / plot_name).symlink_to("/dev/null")
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "eval2")])
    assert result.exit_code != 0 and "refusing to replace it" in result.output
    assert os.readlink(plots / plot_name) == "/dev/null"
    stdout_like = runner.invoke(app, [*arguments, "--out", "/dev/stdout"])
    assert stdout_like.exit_code == 2 and "names a device" in stdout_like.output


def test_onnx_is_refused_over_a_device_link_or_a_folder_and_streams_to_dash(tmp_path, targets):
    checkpoint = write_checkpoint(tmp_path / "ckpt", random_model(6))
    for target in ("/dev/stdout", str(targets["to_null"]), str(targets["to_fifo"]), str(tmp_path)):
        result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--onnx", target, "--no-check"])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and "wrote" not in result.output
    assert untouched(targets)
    streamed = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--onnx", "-"])
    assert streamed.exit_code == 0, streamed.output
    assert b"vr_model.frame_primer.onnx/1" in streamed.stdout_bytes
    assert "wrote -" in streamed.stderr and "max abs difference" in streamed.stderr


def test_vrdata_outputs_refuse_links_to_fifos_and_devices_and_stream_to_dash(tmp_path, targets, capsys):
    from pipelines.common import write_json
    from vr_data.audio import write_audio
    from vr_data.dsp import StftConfig
    from vr_data.mixer.preview import _sheet
    from vr_data.stats.plots import _figure, _save

    for target in (targets["to_fifo"], targets["to_null"], Path("/dev/stdout")):
        with pytest.raises(VRDataError, match="refusing to replace it|names a device"):
            write_json(target, {"a": 1})
        with pytest.raises(VRDataError, match="refusing to replace it|names a device"):
            write_audio(target, np.zeros((2, 100), np.float32), 44100)
        with pytest.raises(VRDataError, match="refusing to replace it|names a device"):
            _sheet([], StftConfig(), target)
        figure, _ = _figure(1)
        with pytest.raises(VRDataError, match="refusing to replace it|names a device"):
            _save(figure, target)
    assert untouched(targets)
    write_json("-", {"a": 1})
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    write_audio(tmp_path / "x.wav", np.zeros((2, 100), np.float32), 44100)
    assert sf.info(tmp_path / "x.wav").frames == 100 and [p.name for p in tmp_path.glob(".*")] == []
