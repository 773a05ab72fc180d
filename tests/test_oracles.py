"""Input-blind oracles (vr_model.inference.oracles): the least-squares gain, the fixed per-bin
mask fitted over several tracks, and both in `vrtrain eval`'s report and table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from test_separate_support import identity_model, separator, write_checkpoint
from vr_data.dsp import StftConfig, stft
from vr_model.inference.evaluate import eval_tracks, evaluate_tracks, global_sdr
from vr_model.inference.oracles import BinMaskFit, apply_bin_mask, best_gain, oracle_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 8000
CONFIG = StftConfig(sample_rate=RATE, n_fft=256, hop_length=128)


def tone(hz: float, seconds: float = 2.0, amplitude: float = 0.3, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    left = amplitude * np.sin(2 * np.pi * hz * t + phase)
    return np.stack([left, 0.8 * left]).astype(np.float32)


def test_best_gain_is_the_least_squares_gain_and_never_below_the_floor():
    rng = np.random.default_rng(0)
    instrumental = rng.standard_normal((2, 4000)).astype(np.float32) * 0.2
    vocals = rng.standard_normal((2, 4000)).astype(np.float32) * 0.1
    mixture = instrumental + vocals
    gain = best_gain(mixture, instrumental)
    # The derivative of ||i - g m||^2 vanishes at the least-squares gain.
    m = mixture.astype(np.float64)
    residual = instrumental.astype(np.float64) - gain * m
    assert abs(float(np.vdot(residual, m))) < 1e-9 * float(np.vdot(m, m))
    assert global_sdr(instrumental, gain * mixture) >= global_sdr(instrumental, mixture)
    assert best_gain(instrumental, 0.5 * instrumental) == pytest.approx(0.5)
    assert best_gain(np.zeros((2, 10)), instrumental[:, :10]) == 1.0


def test_bin_mask_passes_the_instrumentals_band_and_stops_the_vocals():
    instrumental, vocals = tone(250.0), tone(2500.0, amplitude=0.2)
    mixture = instrumental + vocals
    fit = BinMaskFit()
    fit.add(stft(mixture, CONFIG), stft(instrumental, CONFIG))
    mask = fit.mask()
    bin_hz = RATE / CONFIG.n_fft
    assert mask.shape == (CONFIG.n_fft // 2 + 1,)
    assert mask[round(250 / bin_hz)] > 0.99 and mask[round(2500 / bin_hz)] < 0.01
    estimate = apply_bin_mask(mixture, mask, CONFIG)
    assert global_sdr(instrumental, estimate) > 30 > global_sdr(instrumental, mixture)


def test_bin_mask_is_one_least_squares_fit_over_all_tracks():
    """Two tracks with the same band as vocal in one and instrumental in the other: one mask
    for both can only split the difference, weighted by each track's mixture energy."""
    low, high = tone(250.0), tone(2500.0)
    fit = BinMaskFit()
    fit.add(stft(low + 3 * high, CONFIG), stft(low, CONFIG))              # high band: vocal, 3x louder
    fit.add(stft(low + high, CONFIG), stft(low + high, CONFIG))          # high band: instrumental
    bin_hz = RATE / CONFIG.n_fft
    high_bin = round(2500 / bin_hz)
    # sum Re(I conj X) / sum |X|^2 in the high bin: (0 + 1) / (9 + 1) of one tone's energy.
    assert fit.mask()[high_bin] == pytest.approx(0.1, abs=0.01)
    assert fit.mask()[round(250 / bin_hz)] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="no track"):
        BinMaskFit().mask()


def test_oracle_report_scores_both_oracles_per_track_with_medians():
    tracks = []
    for index, vocal_hz in enumerate((1500.0, 2500.0, 3000.0)):
        instrumental, vocals = tone(200.0 + 50 * index), tone(vocal_hz, amplitude=0.15)
        tracks.append((f"song{index}", instrumental + vocals, instrumental, vocals))
    report = oracle_report(tracks, CONFIG)
    assert set(report.scores["gain"]) == set(report.scores["bin_mask"]) == {"song0", "song1", "song2"}
    for track_id, mixture, instrumental, _ in tracks:
        assert report.scores["gain"][track_id].instrumental_sdr == pytest.approx(
            global_sdr(instrumental, best_gain(mixture, instrumental) * mixture), abs=1e-4)
        # Vocals in bands no instrumental uses: the fixed mask removes them, a gain cannot.
        assert report.scores["bin_mask"][track_id].instrumental_sdr > report.scores["gain"][track_id].instrumental_sdr + 10
    medians = report.aggregate("median")
    assert medians["bin_mask"]["instrumental"]["sdr"] == pytest.approx(
        float(np.median([s.instrumental_sdr for s in report.scores["bin_mask"].values()])))
    document = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert set(document["median"]) == {"gain", "bin_mask"} and "fitted on these tracks" in \
        document["definitions"]["bin_mask"]


def test_evaluate_tracks_reports_oracles_on_the_scored_tracks(corpus):
    from vr_data.catalog import read_manifest

    tracks = eval_tracks(read_manifest(corpus["pairs"]), split=None, limit=2)
    report = evaluate_tracks(separator(identity_model()), tracks)
    ids = [result.id for result in report.results]
    assert list(report.oracles.scores["bin_mask"]) == ids and list(report.oracles.scores["gain"]) == ids
    for result in report.results:
        # The least-squares gain can always choose 1, the floor.
        assert report.oracles.scores["gain"][result.id].instrumental_sdr >= result.floor.instrumental_sdr - 1e-6
    document = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert set(document["oracles"]["median"]) == {"gain", "bin_mask"}
    assert evaluate_tracks(separator(identity_model()), tracks, oracles=False).oracles is None


def test_vrtrain_eval_prints_both_oracles_beside_the_model(corpus, tmp_path):
    from pipelines.vrtrain import app

    checkpoint = write_checkpoint(tmp_path / "ckpt", identity_model())
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(checkpoint), "--manifest", str(corpus["pairs"]),
                                      "--split", "train", "--limit", "2", "--out", str(out), "--no-plots",
                                      "--crop-frames", "32", "--batch-size", "2"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    document = json.loads((out / "eval.json").read_text())
    oracles = document["oracles"]["median"]
    assert "best single gain (per track, fitted on it)" in result.output
    assert "best fixed per-bin mask (fitted on these tracks)" in result.output
    assert f"{oracles['bin_mask']['instrumental']['sdr']:.2f} dB" in result.output
    lines = result.output[result.output.index("input-blind"):result.output.index("results in")].splitlines()
    assert len(lines) == 3 and max(len(line.rstrip()) for line in lines) <= 80
