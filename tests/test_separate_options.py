"""What a user meets with `vrtrain separate`, `eval` and `export` (issue 20, sections 4 and 5):
bad options refused before any work, inputs named for what they are, `--device auto`,
`--shifts`, `--stem`, mp3 output, song names in the eval table, a progress bar and `--help`
that fit 80 columns."""

from __future__ import annotations

import inspect
import io
import os
import re

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console
from typer.testing import CliRunner

from test_separate_support import OPTIONS, SMALL_CROPS, identity_model, random_model, separator, song, write_checkpoint
from pipelines.vrtrain import app
from vr_model.inference.separate import SeparationOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "step-00000001", identity_model())


@pytest.fixture
def a_song(tmp_path):
    sf.write(tmp_path / "a.wav", song(0.5, 44100, 2).T, 44100)
    return tmp_path / "a.wav"


@pytest.mark.parametrize("option, value, reason", [
    ("--crop-frames", "99999", "crop_frames must be in 1..64"), ("--crop-frames", "0", "crop_frames must be at least 1"),
    ("--overlap", "1.0", "overlap must be in [0, 1)"), ("--overlap", "-0.5", "overlap must be in [0, 1)"),
    ("--batch-size", "0", "batch_size must be at least 1"), ("--shifts", "0", "shifts must be at least 1"),
])
def test_bad_separation_options_are_refused_before_any_work(checkpoint, a_song, tmp_path, option, value, reason):
    out = tmp_path / "out"
    result = runner.invoke(app, ["separate", str(a_song), "--checkpoint", str(checkpoint), "--out", str(out),
                                 option, value])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and reason in result.output
    assert not out.exists()


def test_an_unwritable_out_is_one_error_and_exit_2(checkpoint, a_song, tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    result = runner.invoke(app, ["separate", str(a_song), str(a_song), "--checkpoint", str(checkpoint),
                                 "--out", str(tmp_path / "taken" / "out"), *SMALL_CROPS])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert "is not a folder (a regular file)" in result.output


def test_a_truncated_wav_is_separated_with_scans_warning(checkpoint, tmp_path):
    sf.write(tmp_path / "cut.wav", song(1.0, 44100, 2).T, 44100, subtype="PCM_16")
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])      # the header still declares 1 s
    result = runner.invoke(app, ["separate", str(tmp_path / "cut.wav"), "--checkpoint", str(checkpoint),
                                 "--out", str(tmp_path / "out"), *SMALL_CROPS])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "truncated: decodes to 0.50 s of the 1.00 s" in result.output


def test_a_fifo_and_a_symlink_loop_are_named_for_what_they_are(checkpoint, tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    result = runner.invoke(app, ["separate", str(tmp_path / "pipe.wav"), str(tmp_path / "loop.wav"),
                                 "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *SMALL_CROPS])
    assert result.exit_code == 1
    assert "pipe.wav: not a regular file: a named pipe (FIFO)" in result.output
    assert "loop.wav: cannot stat (too many levels of symbolic links)" in result.output
    assert "file not found" not in result.output


def test_separate_and_eval_default_to_device_auto():
    from pipelines.separate_cmd import eval_command, separate_command

    for command in (separate_command, eval_command):
        assert inspect.signature(command).parameters["device"].default.default == "auto"


def test_shifts_average_that_many_shifted_grids_and_tta_is_two_shifts_and_a_swap():
    from vr_model.inference.masking import CropMasker, TorchMaskNetwork
    from vr_data.mixer.normalisation import InputNormalisation

    network = TorchMaskNetwork(random_model(2))
    masker = CropMasker(network, InputNormalisation(), crop_frames=32, overlap=0.5, shifts=4)
    assert [grid.offset for grid in masker.passes] == [0, -4, -8, -12] and masker.hop == 16
    tta = CropMasker(network, InputNormalisation(), crop_frames=32, overlap=0.5, tta=True)
    assert [(grid.offset, grid.swap) for grid in tta.passes] == [(0, False), (-8, False), (0, True)]
    audio = song(0.6, 44100, 2, seed=3)
    one = separator(random_model(2), OPTIONS).separate_audio(audio, 44100)
    shifted = separator(random_model(2), SeparationOptions(crop_frames=32, overlap=0.5, shifts=3)).separate_audio(
        audio, 44100)
    assert shifted.shape == one.shape and not np.allclose(shifted, one, atol=1e-6)


def test_stem_writes_one_output_and_mp3_is_written_when_soundfile_can(checkpoint, a_song, tmp_path):
    from vr_data.audio.blocks import output_formats

    out = tmp_path / "out"
    result = runner.invoke(app, ["separate", str(a_song), "--checkpoint", str(checkpoint), "--out", str(out),
                                 "--stem", "vocals", *SMALL_CROPS])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a_vocals.wav"]
    bad = runner.invoke(app, ["separate", str(a_song), "--checkpoint", str(checkpoint), "--out", str(out),
                              "--stem", "drums"])
    assert bad.exit_code == 2 and "--stem must be instrumental or vocals" in bad.output
    if "mp3" not in output_formats():
        pytest.skip("this libsndfile cannot write mp3")
    result = runner.invoke(app, ["separate", str(a_song), "--checkpoint", str(checkpoint), "--out", str(out),
                                 "--format", "mp3", *SMALL_CROPS])
    assert result.exit_code == 0, result.output
    info = sf.info(out / "a_instrumental.mp3")
    assert info.samplerate == 44100 and info.channels == 2 and abs(info.frames - 22050) < 3000
    decoded, _ = sf.read(out / "a_instrumental.mp3", dtype="float32")
    assert np.abs(decoded).max() > 0.1   # the identity model's instrumental is the song


def test_eval_refuses_a_negative_limit_and_names_songs_not_hashed_ids(checkpoint, corpus, tmp_path):
    arguments = ["eval", "--checkpoint", str(checkpoint), "--manifest", str(corpus["pairs"]), "--split", "train",
                 "--out", str(tmp_path / "eval"), "--no-plots", *SMALL_CROPS]
    refused = runner.invoke(app, [*arguments, "--limit", "-1"])
    assert refused.exit_code == 2 and "--limit" in refused.output and not (tmp_path / "eval").exists()
    result = runner.invoke(app, [*arguments, "--limit", "1"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    import json

    track_id = json.loads((tmp_path / "eval" / "eval.json").read_text())["tracks"][0]["id"]
    name = track_id.rsplit("-", 1)[0]
    table = result.output[result.output.index("global SDR (MDX)"):]
    assert name in table and track_id not in table


def _terminal(monkeypatch, width: int = 80) -> io.StringIO:
    """Make the commands' console an 80-column terminal writing into a buffer."""
    import pipelines.common
    import pipelines.separate_cmd

    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=width, color_system=None)
    monkeypatch.setattr(pipelines.common, "console", terminal)
    monkeypatch.setattr(pipelines.separate_cmd, "console", terminal)
    return buffer


def test_the_separate_progress_bar_fits_80_columns_with_its_total_speed_and_time_left(checkpoint, tmp_path,
                                                                                       monkeypatch):
    sf.write(tmp_path / "a_song_with_a_rather_long_name_indeed.wav", song(0.5, 44100, 2).T, 44100)
    buffer = _terminal(monkeypatch)
    result = runner.invoke(app, ["separate", str(tmp_path / "a_song_with_a_rather_long_name_indeed.wav"),
                                 "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *SMALL_CROPS])
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    bars = [line for line in re.split(r"[\r\n]", text) if "min" in line and "/" in line and "x" in line]
    assert bars, text
    last = bars[-1]
    assert len(last.rstrip()) <= 80 and "…" not in last and "..." not in last
    assert re.search(r"0\.01/0\.01 min +\d+\.\dx +\d:\d\d:\d\d", last), last


def test_separation_docs_describe_the_plain_progress_lines_as_they_are():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "separation.md").read_text()
    assert "25% steps" not in text and "VR_PROGRESS_INTERVAL" in text
