"""Checkpoints: safetensors + JSON round trip, atomic writes, no unpickling."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from vr_data.errors import VRDataError
from vr_model import FramePrimerUNet, build_model
from vr_model.network.checkpoint import load_model, read_checkpoint_json, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = build_model("tiny").config.replace(bins=64, channels=(2, 2, 3, 3, 4), max_frames=32, num_heads=2)


def test_round_trip_restores_config_weights_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = FramePrimerUNet(SMALL).eval()
    save_checkpoint(tmp_path / "step_100", model, extra_json={"step": 100, "losses": [0.5, 0.25]})
    assert sorted(path.name for path in (tmp_path / "step_100").iterdir()) == ["config.json", "model.safetensors"]

    loaded = load_model(tmp_path / "step_100")
    assert loaded.config == SMALL
    assert not loaded.training
    assert all(parameter.requires_grad for parameter in loaded.parameters())  # ready to fine-tune
    for (name, original), (name_again, restored) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_again and torch.equal(original, restored)
    mixture = torch.rand(1, 2, 65, 12)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(mixture), model(mixture), rtol=0, atol=0)

    document = read_checkpoint_json(tmp_path / "step_100")
    assert document["extra"] == {"step": 100, "losses": [0.5, 0.25]}
    assert document["parameters"] == model.num_parameters()


def test_overwrite_replaces_files_and_leaves_other_files(tmp_path):
    torch.manual_seed(0)
    first, second = FramePrimerUNet(SMALL), FramePrimerUNet(SMALL)
    save_checkpoint(tmp_path, first, extra_json={"step": 1})
    (tmp_path / "optimizer.pt").write_bytes(b"kept")
    save_checkpoint(tmp_path, second, extra_json={"step": 2})
    assert (tmp_path / "optimizer.pt").read_bytes() == b"kept"
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert read_checkpoint_json(tmp_path)["extra"] == {"step": 2}
    assert torch.equal(load_model(tmp_path).out.weight, second.out.weight)


def test_unserialisable_extra_fails_before_touching_files(tmp_path):
    model = FramePrimerUNet(SMALL)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, model, extra_json={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_missing_or_foreign_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(VRDataError, match="not a checkpoint"):
        load_model(tmp_path)
    save_checkpoint(tmp_path, FramePrimerUNet(SMALL))

    # A pickle where the weights should be is refused, never unpickled.
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled a checkpoint",))

    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(VRDataError, match="damaged checkpoint"):
        load_model(tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    del document["files"]   # a checkpoint from before digests: still never unpickled
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(VRDataError, match="unreadable checkpoint weights"):
        load_model(tmp_path)

    save_checkpoint(tmp_path, FramePrimerUNet(SMALL))
    document = json.loads((tmp_path / "config.json").read_text())
    document["model"]["channels"] = [3, 3, 3, 3, 3]
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(VRDataError, match="do not match"):
        load_model(tmp_path)

    document["format"] = "something-else/9"
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(VRDataError, match="format"):
        load_model(tmp_path)
