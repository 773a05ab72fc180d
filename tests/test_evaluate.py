"""SDR as published: the MDX global SDR, BSSEval v4 against museval, floor and ceiling, silent stems,
the eval report and the trainer's validation SDR."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from test_build_support import STFT as STORE_STFT
from test_separate_support import SMALL, constant_mask_model, identity_model, random_model, separator
from vr_data.dsp import StftConfig
from vr_model.inference.evaluate import (
    EvalReport, bsseval_v4_frames, bsseval_v4_sdr, eval_tracks, evaluate_tracks, global_sdr, ideal_ratio_mask,
    plot_track, score_track, valid_sdr, validation_sdr,
)
from vr_data.mixer.normalisation import InputNormalisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 8000   # BSSEval frames are 1 s of samples at any rate; a low rate keeps museval fast


def museval_metrics():
    """museval's BSSEval module, loaded without `museval/__init__.py`: that imports musdb, whose
    stempeg refuses to import without an ffmpeg executable. The metrics need only numpy/scipy."""
    spec = importlib.util.find_spec("museval")
    assert spec is not None, "museval is a dev dependency (pip install -e .[dev])"
    path = Path(spec.submodule_search_locations[0]) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics_standalone", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def museval_v4(references: np.ndarray, estimates: np.ndarray, rate: int) -> np.ndarray:
    """Framewise SDR exactly as `museval.evaluate(..., mode="v4")` calls it, `(sources, frames)`.
    Its arrays are `(sources, samples, channels)`."""
    metrics = museval_metrics()
    sdr, _, _, _, _ = metrics.bss_eval(np.transpose(references, (0, 2, 1)), np.transpose(estimates, (0, 2, 1)),
                                       compute_permutation=False, window=rate, hop=rate,
                                       framewise_filters=False, bsseval_sources_version=False)
    return sdr


def two_stems(seconds: float, rate: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    instrumental = np.stack([np.sin(2 * np.pi * 110 * t), np.sin(2 * np.pi * 165 * t + 1)]) * 0.4
    instrumental += 0.05 * rng.standard_normal(instrumental.shape)
    vocals = 0.3 * np.sin(2 * np.pi * 440 * t + 2 * np.sin(2 * np.pi * 3 * t))[None].repeat(2, 0)
    vocals += 0.02 * rng.standard_normal(vocals.shape)
    return instrumental, vocals


def test_global_sdr_is_the_mdx_formula():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 5000))
    estimate = reference + 0.1 * rng.standard_normal((2, 5000))
    # The MDX 2021 starter kit: references (sources, samples, channels), sums over axes 1 and 2.
    references, estimates = reference.T[None], estimate.T[None]
    delta = 1e-7
    num = np.sum(np.square(references), axis=(1, 2)) + delta
    den = np.sum(np.square(references - estimates), axis=(1, 2)) + delta
    assert global_sdr(reference, estimate) == pytest.approx(float(10 * np.log10(num / den)[0]), abs=1e-12)
    assert global_sdr(reference, reference) == pytest.approx(10 * np.log10((np.sum(reference ** 2) + delta) / delta))


def test_bsseval_v4_equals_museval_to_a_hundredth_of_a_db():
    instrumental, vocals = two_stems(4.6, RATE)   # 4 whole frames and a partial one museval drops
    rng = np.random.default_rng(1)
    references = np.stack([instrumental, vocals])
    # Estimates with leakage of the other stem, noise, and a filter (a delayed copy) to project.
    leak = np.stack([0.3 * vocals, 0.2 * instrumental])
    delayed = np.roll(references, 3, axis=-1) * 0.2
    estimates = references + leak + delayed + 0.01 * rng.standard_normal(references.shape)
    # A second where the vocal estimate is silent: museval makes that frame NaN for every source.
    estimates[1, :, RATE: 2 * RATE] = 0.0
    ours = bsseval_v4_frames(references, estimates, RATE)
    theirs = museval_v4(references, estimates, RATE)
    assert ours.shape == theirs.shape == (2, 4)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)) and np.isnan(ours[:, 1]).all()
    finite = ~np.isnan(ours)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=0, atol=0.01)
    np.testing.assert_allclose(bsseval_v4_sdr(references, estimates, RATE), np.nanmedian(theirs, axis=1), atol=0.01)


def test_bsseval_v4_equals_museval_for_the_floor_and_a_short_signal():
    instrumental, vocals = two_stems(0.7, RATE, seed=2)   # shorter than one window: one frame
    references = np.stack([instrumental, vocals])
    mixture = instrumental + vocals
    estimates = np.stack([mixture, mixture])
    np.testing.assert_allclose(bsseval_v4_frames(references, estimates, RATE), museval_v4(references, estimates, RATE),
                               rtol=0, atol=0.01)


def test_floor_and_ceiling_on_a_pair_with_known_values():
    config = StftConfig()
    rate = config.sample_rate
    t = np.arange(3 * rate) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.2)   # no edge transients in the STFT
    bin_hz = rate / config.n_fft
    instrumental = np.stack([0.5 * np.sin(2 * np.pi * 20 * bin_hz * t) * fade] * 2).astype(np.float32)
    vocals = np.stack([0.25 * np.sin(2 * np.pi * 200 * bin_hz * t) * fade] * 2).astype(np.float32)
    mixture = instrumental + vocals
    result = score_track("known", mixture, instrumental, vocals, mixture, config)
    # Floor: the error of the mixture as the instrumental is the vocals, and vice versa: 20 log10(0.5/0.25).
    assert result.floor.instrumental_sdr == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert result.floor.vocals_sdr == pytest.approx(-20 * math.log10(2), abs=1e-3)
    assert result.floor.instrumental_bsseval_sdr == pytest.approx(20 * math.log10(2), abs=1e-3)
    # The model here returned the mixture as the instrumental: that is the instrumental floor.
    # Its vocals are then silent (mixture - mixture), which MDX scores 0 dB and museval as NaN.
    assert result.model.instrumental_sdr == result.floor.instrumental_sdr
    assert result.model.vocals_sdr == pytest.approx(0.0, abs=1e-9) and math.isnan(result.model.vocals_bsseval_sdr)
    # Ceiling: 180 bins apart the ratio mask separates the two tones almost perfectly.
    assert result.ceiling.instrumental_sdr > 60.0 and result.ceiling.vocals_sdr > 50.0
    assert result.ceiling.instrumental_bsseval_sdr > 60.0

    # Equal stems: the ratio mask is 1/2 everywhere, which is exact; the floor is 0 dB.
    same = score_track("same", 2 * instrumental, instrumental, instrumental, 2 * instrumental, config)
    assert same.floor.instrumental_sdr == pytest.approx(0.0, abs=1e-9)
    assert same.floor.vocals_bsseval_sdr == pytest.approx(0.0, abs=1e-9)
    assert same.ceiling.instrumental_sdr > 90.0


def test_ideal_ratio_mask_of_disjoint_stems_recovers_each():
    """Stems in bins far apart (no shared noise): the ratio mask gives each stem back, to within
    the windows' leakage, and what it removes from the mixture is the other stem."""
    config = StftConfig(n_fft=256, hop_length=64)
    rate = 44100
    t = np.arange(rate) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.05)
    bin_hz = rate / config.n_fft
    instrumental = np.stack([0.4 * np.sin(2 * np.pi * 8 * bin_hz * t) * fade] * 2).astype(np.float32)
    vocals = np.stack([0.3 * np.sin(2 * np.pi * 60 * bin_hz * t) * fade] * 2).astype(np.float32)
    estimate = ideal_ratio_mask(instrumental + vocals, instrumental, config)
    assert estimate.shape == instrumental.shape
    assert global_sdr(instrumental, estimate) > 40.0
    assert global_sdr(vocals, instrumental + vocals - estimate) > 40.0
    # Shared noise would make the floor the limit: the mixture alone scores about 2.5 dB here.
    assert global_sdr(instrumental, instrumental + vocals) < 5.0


def test_a_silent_vocal_stem_gives_no_inf_and_no_crash(tmp_path):
    config = StftConfig(n_fft=256, hop_length=64)
    instrumental, _ = two_stems(2.5, 44100, seed=4)
    vocals = np.zeros_like(instrumental)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no divide-by-zero or all-NaN warnings either
        result = score_track("vocal-free", instrumental, instrumental, vocals, 0.9 * instrumental, config)
    for scores in (result.model, result.floor, result.ceiling):
        assert math.isfinite(scores.instrumental_sdr) and math.isfinite(scores.vocals_sdr)
        # museval: a frame with a silent reference is NaN, so the whole track is.
        assert math.isnan(scores.instrumental_bsseval_sdr) and math.isnan(scores.vocals_bsseval_sdr)
    # MDX: a silent reference with a (nearly) silent estimate is about 0 dB, with a non-silent
    # one very negative. The ceiling's vocals are the STFT round trip's residue, ~1e-8.
    assert result.floor.vocals_sdr < -100 and result.ceiling.vocals_sdr == pytest.approx(0.0, abs=0.05)
    assert result.model.instrumental_sdr == pytest.approx(20.0, abs=1e-6)   # 10 log10(1 / 0.1^2)

    other = score_track("sung", instrumental + 0.3 * instrumental[::-1], instrumental, 0.3 * instrumental[::-1],
                        instrumental, config)
    report = EvalReport(results=[result, other])
    median = report.aggregate("median")
    # The NaN track is skipped: the BSSEval median is the other track's value.
    assert median["model"]["instrumental"]["bsseval_sdr"] == pytest.approx(other.model.instrumental_bsseval_sdr)
    document = json.loads(json.dumps(report.to_json(), allow_nan=False))   # strict JSON: NaN became null
    assert document["tracks"][0]["model"]["vocals_bsseval_sdr"] is None
    assert plot_track(result, tmp_path / "vocal-free.png").stat().st_size > 1000


def test_eval_of_a_manifest_scores_model_floor_and_ceiling(corpus, tmp_path):
    from vr_data.catalog import read_manifest

    manifest = read_manifest(corpus["pairs"])
    tracks = eval_tracks(manifest, split=None, limit=2)
    assert [t.id for t in tracks] == sorted(item.id for item in manifest.items)[:2]
    model_separator = separator(identity_model())
    seen = []
    report = evaluate_tracks(model_separator, tracks, lambda track, result, error: seen.append((track.id, error)))
    assert [error for _, error in seen] == [None, None]
    for result in report.results:
        # An identity model returns the mixture: its scores are the floor's (to STFT round-trip precision).
        assert result.model.instrumental_sdr == pytest.approx(result.floor.instrumental_sdr, abs=0.01)
        assert result.ceiling.instrumental_sdr > result.floor.instrumental_sdr + 3
        assert plot_track(result, tmp_path / f"{result.id}.png").exists()
    with pytest.raises(Exception, match="no pairs in split 'test'"):
        eval_tracks(manifest, split="test")


def test_validation_sdr_from_the_store_is_the_floor_for_an_identity_model(built_store):
    from vr_data.store import open_store

    store = open_store(built_store)
    split = min(store.tracks_by_role("pair"), key=lambda t: t.id).split
    config = SMALL.replace(bins=STORE_STFT.bins - 1)
    identity = constant_mask_model(30.0, config)
    identity.train()
    result = validation_sdr(identity, InputNormalisation(), store, k=2, split=split, crop_frames=16, batch_size=2)
    assert identity.training   # the trainer's mode is restored
    assert 1 <= len(result.tracks) <= 2
    assert result.sdr == pytest.approx(result.floor, abs=0.01)
    assert result.ceiling > result.floor
    silent = validation_sdr(constant_mask_model(-30.0, config), InputNormalisation(), store, k=2, split=split,
                            crop_frames=16)
    assert silent.sdr == pytest.approx(0.0, abs=1e-3)   # an all-zero estimate: 10 log10(E / E)
    assert validation_sdr(identity, InputNormalisation(), store, k=2, split="nonexistent") is None
    learned = validation_sdr(random_model(1, config), InputNormalisation(), store, k=2, split=split, crop_frames=16)
    assert math.isfinite(learned.sdr) and len(learned.per_track) == len(learned.tracks)
    assert abs(learned.sdr - result.sdr) > 0.01   # a real mask changes the score: it is the model's


def test_the_trainers_sdr_hook_returns_model_floor_and_ceiling_fields(built_store):
    """`vr_model.train.validation` calls `vr_model.inference.evaluate.valid_sdr` when validation.sdr_songs > 0."""
    import torch

    from vr_model.train.validation import validation_sdr as trainer_hook

    config = SMALL.replace(bins=STORE_STFT.bins - 1)
    model = random_model(2, config)
    fields = trainer_hook(model, built_store, 1, InputNormalisation(), torch.device("cpu"))
    assert set(fields) == {"valid_sdr", "valid_sdr_floor", "valid_sdr_ceiling", "valid_sdr_songs"}
    assert fields["valid_sdr_songs"] == 1   # the store has one valid pair
    assert all(math.isfinite(value) for value in fields.values())
    assert fields["valid_sdr_floor"] < fields["valid_sdr_ceiling"]
    assert trainer_hook(model, built_store, 0, InputNormalisation(), torch.device("cpu")) is None
    assert valid_sdr(model, built_store, songs=1, normalisation=InputNormalisation()) == fields
