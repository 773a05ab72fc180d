"""vrdata stats on a store: totals from its records, spectra streamed in chunks against whole-track
numpy, silence from a known silent section, group leakage, stats.json and load_normalisation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tone, write_pair
from vr_data.audio import write_audio
from vr_data.store.build import build_store
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.dsp.stft import StftConfig, stft_frames_major
from vr_data.stats.report import describe
from vr_data.stats.settings import StatsSettings
from vr_data.store.normalisation import load_normalisation
from vr_data.store.normalisation import STD_FLOOR, log_eps
from vr_data.stats.plots import write_plots
from vr_data.stats.spectral import frame_mean_square
from vr_data.store import open_store
from vr_data.store.plan import Geometry

RATE = 44100
STFT = StftConfig(n_fft=256, hop_length=128)
GEOMETRY = Geometry(chunk_frames=32, shard_frames=128, segment_frames=32, wds_shard_bytes=200_000)
SILENT_SECONDS = 0.5
# 50 frames per read: not a multiple of the chunk or shard size, so every track is read in several
# unaligned pieces whose partial statistics must merge exactly.
SETTINGS = StatsSettings(chunk_frames=50)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("store_stats")
    write_pair(base / "pairs", "Alpha - One_mix.wav", "Alpha - One_inst.wav", seconds=1.5, seed=1)
    write_pair(base / "pairs", "Beta - Two_mix.wav", "Beta - Two_inst.wav", seconds=1.2, seed=2)
    quiet = tone(1.5, seed=3)
    quiet[:, : int(SILENT_SECONDS * RATE)] = 0.0
    write_audio(base / "vocals_a" / "Singer X - Take 1.wav", quiet, RATE, subtype="FLOAT")
    write_audio(base / "vocals_a" / "Singer Y - Take 2.wav", tone(1.0, seed=4), RATE)
    write_audio(base / "vocals_b" / "Singer X - Take 3.wav", tone(1.1, seed=5), RATE)
    write_audio(base / "vocals_b" / "Singer Q - Changed.wav", tone(1.0, seed=6), RATE)
    manifests = []
    for name, options in {"pairs": dict(layout="pairs", group_by="artist", valid_fraction=0.5),
                          "vocals_a": dict(layout="vocals", group_by="artist", valid_fraction=0.0),
                          "vocals_b": dict(layout="vocals", group_by="artist", valid_fraction=1.0)}.items():
        result = scan(base / name, ScanOptions(min_seconds=0.5, **options))
        manifests.append(read_manifest(write_manifest(base / "manifests" / f"{name}.jsonl", result.manifest)))
    # Changed after the scan: the build refuses it (hash mismatch), a reject the stats must count.
    write_audio(base / "vocals_b" / "Singer Q - Changed.wav", tone(1.0, seed=7), RATE)
    out = base / "store"
    build_store(manifests, out, stft=STFT, geometry=GEOMETRY)
    store_json = (out / "store.json").read_bytes()
    report = describe([out], settings=SETTINGS)
    return {"path": out, "report": report, "store_json": store_json, "base": base}


def _tracks_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "tracks.jsonl").read_text().splitlines() if line.strip()]


def test_totals_equal_the_store_records(store):
    (section,) = store["report"]["stores"]
    tracks = _tracks_jsonl(store["path"])
    rejects = [json.loads(line) for line in (store["path"] / "rejects.jsonl").read_text().splitlines() if line]
    rows = {(row["library"], row["role"]): row for row in section["libraries"]}
    for key in {(t["library"], t["role"]) for t in tracks}:
        mine = [t for t in tracks if (t["library"], t["role"]) == key]
        row = rows[key]
        assert row["items"] == len(mine)
        assert row["seconds"] == pytest.approx(sum(t["duration"] for t in mine))
        assert row["days"] == pytest.approx(row["seconds"] / 86400)
        assert row["frames"] == sum(t["frames"] for t in mine)
        for split in ("train", "valid"):
            assert row["splits"][split]["items"] == sum(t["split"] == split for t in mine)
            assert row["splits"][split]["frames"] == sum(t["frames"] for t in mine if t["split"] == split)
    assert [r["code"] for r in rejects] == ["hash_mismatch"]
    assert rows[("vocals_b", "vocal")]["rejects"] == {"hash_mismatch": 1}
    assert section["roles"]["vocal"]["items"] == 3 and section["roles"]["pair"]["items"] == 2
    assert section["stft"]["n_fft"] == STFT.n_fft


def test_log_magnitude_moments_equal_numpy_over_whole_tracks(store):
    (section,) = store["report"]["stores"]
    opened = open_store(store["path"])
    rows: dict[str, list[np.ndarray]] = {}
    for track in opened.tracks:
        for source in track.sources:
            spec = opened.read_spectrogram(track, source)  # complex64 (2, bins, frames), the whole track
            values = np.log(np.abs(spec).astype(np.float64) + SETTINGS.log_eps).transpose(0, 2, 1)
            rows.setdefault(f"{track.role}/{source}", []).append(values.reshape(-1, opened.bins))
    assert set(rows) == {"pair/mixture", "pair/instrumental", "vocal/vocal"}
    for key, parts in rows.items():
        values = np.concatenate(parts)
        entry = section["content"]["log_magnitude"][key]
        assert entry["rows"] == values.shape[0]
        np.testing.assert_allclose(entry["mean"], values.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(entry["std"], values.std(axis=0), rtol=1e-4, atol=1e-6)


def test_chunked_streaming_equals_one_read_per_track(store, tmp_path):
    whole = describe([store["path"]], settings=replace(SETTINGS, chunk_frames=1_000_000), save_store_stats=False)
    chunked = store["report"]["stores"][0]["content"]
    for key, entry in whole["stores"][0]["content"]["log_magnitude"].items():
        np.testing.assert_allclose(chunked["log_magnitude"][key]["mean"], entry["mean"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(chunked["log_magnitude"][key]["std"], entry["std"], rtol=1e-8, atol=1e-12)
    for one_read, in_chunks in zip(whole["stores"][0]["content"]["tracks"], chunked["tracks"]):
        assert {k: v for k, v in one_read.items() if k != "rms_dbfs"} == {k: v for k, v in in_chunks.items() if k != "rms_dbfs"}
        assert one_read["rms_dbfs"] == pytest.approx(in_chunks["rms_dbfs"], abs=1e-12)


def test_frame_levels_follow_parseval():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, 4000))).astype(np.float32)
    spec = stft_frames_major(audio, STFT)  # (channels, frames, bins)
    measured = frame_mean_square(np.abs(spec.transpose(1, 0, 2)) ** 2, STFT)
    padded = np.pad(audio.astype(np.float64), ((0, 0), (STFT.n_fft // 2, STFT.n_fft // 2 + STFT.padded_samples(4000) - 4000)))
    window = np.hanning(STFT.n_fft + 1)[:-1]
    direct = [np.mean([np.sum((window * padded[c, t * STFT.hop_length : t * STFT.hop_length + STFT.n_fft]) ** 2)
                       for c in range(2)]) / np.sum(window**2) for t in range(spec.shape[1])]
    np.testing.assert_allclose(measured, direct, rtol=1e-4)
    # A full-scale sine reads -3.01 dBFS, as the RMS of its samples.
    t = np.arange(8192) / RATE
    sine = np.sin(2 * np.pi * 1000 * t)[None].astype(np.float32)
    level = 10 * np.log10(frame_mean_square(np.abs(stft_frames_major(sine, STFT).transpose(1, 0, 2)) ** 2, STFT))
    assert level[10:-10] == pytest.approx(np.full(level[10:-10].shape, -3.01), abs=0.05)


def test_silent_frames_of_the_known_silent_section(store):
    (section,) = store["report"]["stores"]
    opened = open_store(store["path"])
    threshold = 10 ** (SETTINGS.silence_dbfs / 10)
    # Frames whose whole window lies in the digital silence at the start.
    fully_silent = (int(SILENT_SECONDS * RATE) - STFT.n_fft // 2) // STFT.hop_length + 1
    total_silent = total_frames = 0
    for record in section["content"]["tracks"]:
        track = opened.track(record["id"])
        spec = opened.read_spectrogram(track, record["source"])  # (2, bins, frames)
        power = (np.abs(spec) ** 2).transpose(2, 0, 1)
        silent = int(np.sum(frame_mean_square(power, STFT) < threshold))
        assert record["frames"] == track.frames
        assert record["silence_fraction"] == pytest.approx(silent / track.frames)
        if record["role"] == "vocal":
            total_silent += silent
            total_frames += track.frames
        if "take-1" in record["id"]:
            assert fully_silent <= silent <= fully_silent + 2
        elif record["role"] == "vocal":
            assert silent == 0
    vocal = section["content"]["sources"]["vocal/vocal"]
    assert vocal["frames"] == total_frames
    assert vocal["silence_fraction"]["frames"] == total_silent
    assert vocal["silence_fraction"]["of_frames"] == pytest.approx(total_silent / total_frames)
    assert sum(vocal["frame_level_dbfs"]["histogram"]["counts"]) + fully_silent >= total_frames  # -inf underflows


def test_group_leak_across_the_split_in_a_store(store):
    (leak,) = store["report"]["stores"][0]["integrity"]["group_leaks"]
    assert leak["role"] == "vocal" and leak["group"] == "singer x"
    assert [len(leak["splits"][split]) for split in ("train", "valid")] == [1, 1]


def test_normalisation_saved_and_loaded(store):
    path = store["path"]
    section = store["report"]["stores"][0]
    assert Path(section["stats_json"]) == path / "stats.json"
    assert (path / "store.json").read_bytes() == store["store_json"]  # the completeness marker is untouched
    assert not list(path.glob(".stats.json.tmp*"))
    open_store(path)  # still complete and readable
    mean, std = load_normalisation(path, "pair")
    entry = section["content"]["log_magnitude"]["pair/mixture"]  # the model's input is the mixture
    assert mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == (STFT.bins,)
    np.testing.assert_allclose(mean, entry["mean"], rtol=1e-6)
    np.testing.assert_allclose(std, np.maximum(entry["std"], STD_FLOOR), rtol=1e-6)
    vocal_mean, _ = load_normalisation(path, "vocal")
    np.testing.assert_allclose(vocal_mean, section["content"]["log_magnitude"]["vocal/vocal"]["mean"], rtol=1e-6)
    assert log_eps(path) == SETTINGS.log_eps
    with pytest.raises(VRDataError, match="no statistics for pretrain"):
        load_normalisation(path, "pretrain")
    with pytest.raises(VRDataError, match="unknown role"):
        load_normalisation(path, "drums")


def test_normalisation_refused_when_missing_or_stale(store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store["path"], copy)
    (copy / "stats.json").unlink()
    with pytest.raises(VRDataError, match="no statistics yet"):
        load_normalisation(copy, "pair")
    shutil.copyfile(store["path"] / "stats.json", copy / "stats.json")
    load_normalisation(copy, "pair")
    meta = json.loads((copy / "store.json").read_text())
    meta["created"] = "rebuilt"
    (copy / "store.json").write_text(json.dumps(meta))
    with pytest.raises(VRDataError, match="stale"):
        load_normalisation(copy, "pair")


def test_store_without_content_and_incomplete_store(store, tmp_path):
    report = describe([store["path"]], content=False)
    assert report["stores"][0]["content"] is None and report["stores"][0]["stats_json"] is None
    import shutil

    half = tmp_path / "half"
    shutil.copytree(store["path"], half)
    text = (half / "store.json").read_text()
    (half / "store.json").write_text(text.replace('"complete": true', '"complete": false'))
    with pytest.raises(VRDataError, match="incomplete"):
        describe([half])


def test_store_plots_and_cli(store, tmp_path):
    from pipelines.vrdata import app

    written = write_plots(store["report"], tmp_path / "plots")
    assert sorted(p.name for p in written) == ["store-store-durations.png", "store-store-loudness.png",
                                               "store-store-spectrum.png", "store-store-splits.png"]
    result = CliRunner().invoke(app, ["stats", str(store["path"]), "--workers", "0", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "stats.json" in result.output and "singer x" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["stores"][0]["roles"] == store["report"]["stores"][0]["roles"]
