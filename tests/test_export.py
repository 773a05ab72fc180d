"""ONNX export of the mask network: parity with torch, the contract in the metadata, separation
through onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_separate_support import OPTIONS, SMALL, STFT, random_model, separator, song
from vr_data.errors import VRDataError
from vr_model.inference.export import OnnxMaskNetwork, export_onnx, max_abs_difference, separator_from_onnx
from vr_data.mixer.normalisation import InputNormalisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = random_model(7)
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    data = export_onnx(model, path, InputNormalisation("crop_max"), STFT)
    assert path.read_bytes() == data
    return model, path


def test_onnx_matches_torch_within_1e_4_for_every_frame_count(exported):
    model, path = exported
    # 1 frame, an odd count, the traced count, and the longest crop the model takes.
    assert max_abs_difference(model, path, frames=(1, 7, 32, SMALL.max_frames), batch=3) <= 1e-4
    # The export traced FrameNorm as plain operations and gave the model its own forward back.
    from vr_model.network.layers import FrameNorm

    norms = [module for module in model.modules() if isinstance(module, FrameNorm)]
    assert norms and not any("forward" in vars(module) for module in norms)


def test_onnx_carries_the_contract_and_refuses_too_many_frames(exported):
    _, path = exported
    network = OnnxMaskNetwork(path)
    assert network.normalisation == InputNormalisation("crop_max") and network.stft == STFT
    assert (network.channels, network.bins, network.max_frames) == (2, 129, 64)
    with pytest.raises(VRDataError, match="at most 64"):
        network(torch.rand(1, 2, 129, 65))


def test_separation_through_onnxruntime_equals_torch(exported):
    model, path = exported
    audio = song(1.2, 44100, 2, seed=5)
    through_torch = separator(model).separate_audio(audio, 44100)
    through_onnx = separator_from_onnx(path, options=OPTIONS).separate_audio(audio, 44100)
    np.testing.assert_allclose(through_onnx, through_torch, rtol=0, atol=1e-4)


def test_only_mask_models_and_matching_stfts_are_exported(tmp_path):
    with pytest.raises(VRDataError, match="only mask models"):
        export_onnx(random_model(0, SMALL.replace(head="linear")), tmp_path / "x.onnx", InputNormalisation(), STFT)
    from vr_data.dsp import StftConfig

    with pytest.raises(VRDataError, match="bins"):
        export_onnx(random_model(0), tmp_path / "x.onnx", InputNormalisation(), StftConfig())
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(VRDataError, match="cannot load the ONNX model"):
        OnnxMaskNetwork(tmp_path / "junk.onnx")
    with pytest.raises(VRDataError, match="not found"):
        OnnxMaskNetwork(tmp_path / "missing.onnx")
