"""vrdata stats on manifests: every figure against values computed directly from known content.

The libraries (built once per module):
- pairs/: three pairs, 1.5 s, one with its instrumental delayed by 30 samples, one in flac;
- vocals_a/ (all train): a tone with its first 0.5 s digitally silent, a tone with 20 clipped
  samples, a mono 48 kHz flac; vocals_b/ (all valid): the same singer as one in vocals_a (a
  leaked group) and a byte copy of a vocals_a file (a duplicate across libraries and splits);
- instrumentals/: a -23 dBFS stereo 1 kHz sine, two identical files (a duplicate inside the
  library), a byte copy of a pair's instrumental (a duplicate across roles), a corrupt file.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import tone, write_pair
from vr_data.audio import loudness
from vr_data.audio import load_audio, write_audio
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import read_manifest, rejects_path, write_manifest, write_rejects
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.dsp.stft import StftConfig, stft
from vr_data.stats.report import describe
from vr_data.stats.settings import StatsSettings
from vr_data.stats.plots import write_plots

RATE = 44100
OFFSET = 30
SILENT_SECONDS = 0.5
CLIPPED_PER_CHANNEL = 10


def _write_libraries(base: Path) -> dict[str, Path]:
    pairs = base / "pairs"
    write_pair(pairs, "Alpha - One_mix.wav", "Alpha - One_inst.wav", seconds=1.5, seed=1)
    write_pair(pairs, "Alpha - Two_mix.wav", "Alpha - Two_inst.wav", seconds=1.5, seed=2, offset_samples=OFFSET)
    write_pair(pairs, "Beta - Three_mix.flac", "Beta - Three_inst.flac", seconds=1.5, seed=3)

    vocals_a = base / "vocals_a"
    silent_start = tone(1.5, seed=1)
    silent_start[:, : int(SILENT_SECONDS * RATE)] = 0.0
    write_audio(vocals_a / "Singer X - Take 1.wav", silent_start, RATE, subtype="FLOAT")
    clipped = tone(1.2, seed=2)
    clipped[:, 100 : 100 + CLIPPED_PER_CHANNEL] = 1.0
    write_audio(vocals_a / "Singer Y - Take 2.wav", clipped, RATE, subtype="FLOAT")
    write_audio(vocals_a / "Singer W - Mono.flac", tone(1.0, 48000, channels=1, seed=4), 48000)

    vocals_b = base / "vocals_b"
    write_audio(vocals_b / "Singer X - Take 3.wav", tone(1.0, seed=5), RATE)
    vocals_b.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vocals_a / "Singer Y - Take 2.wav", vocals_b / "Singer Z - Copy.wav")

    instrumentals = base / "instrumentals"
    t = np.arange(2 * RATE) / RATE
    sine = 10 ** (-23 / 20) * np.sin(2 * np.pi * 1000 * t)
    write_audio(instrumentals / "sine.wav", np.stack([sine, sine]), RATE, subtype="FLOAT")
    write_audio(instrumentals / "dup_a.wav", tone(1.3, seed=6), RATE)
    shutil.copyfile(instrumentals / "dup_a.wav", instrumentals / "dup_b.wav")
    shutil.copyfile(pairs / "instruments" / "Alpha - One_inst.wav", instrumentals / "copied_inst.wav")
    (instrumentals / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio")
    return {"pairs": pairs, "vocals_a": vocals_a, "vocals_b": vocals_b, "instrumentals": instrumentals}


_SCANS = {
    "pairs": dict(layout="pairs", group_by="artist", valid_fraction=0.5, max_offset_ms=5.0),
    "vocals_a": dict(layout="vocals", library="vocals_a", group_by="artist", valid_fraction=0.0),
    "vocals_b": dict(layout="vocals", library="vocals_b", group_by="artist", valid_fraction=1.0),
    "instrumentals": dict(layout="instrumentals", valid_fraction=0.5),
}


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("libraries")
    roots = _write_libraries(base)
    manifests = {}
    for name, options in _SCANS.items():
        result = scan(roots[name], ScanOptions(min_seconds=0.5, **options))
        path = base / "manifests" / f"{name}.jsonl"
        write_manifest(path, result.manifest)
        write_rejects(rejects_path(path), result.rejects)
        manifests[name] = path
    report = describe(list(manifests.values()))
    return {"roots": roots, "manifests": manifests, "report": report, "base": base}


def _decoded(manifest, item, source) -> np.ndarray:
    return np.concatenate([load_audio(p, RATE, silence_dbfs=None) for p in manifest.source_paths(item, source)])


def test_totals_per_library_equal_the_files(libraries):
    section = libraries["report"]["manifests"]
    rows = {row["library"]: row for row in section["libraries"]}
    config = StftConfig()
    for name, path in libraries["manifests"].items():
        manifest = read_manifest(path)
        row = rows[manifest.library]
        seconds, frames, splits = 0.0, 0, {}
        rates, channels, formats = {}, {}, {}
        for item in manifest.items:
            durations = []
            for key, entry in item.files.items():
                info = sf.info(str(manifest.resolve(entry.path)))
                durations.append(info.frames / info.samplerate)
                rates[str(info.samplerate)] = rates.get(str(info.samplerate), 0) + 1
                channels[str(info.channels)] = channels.get(str(info.channels), 0) + 1
                formats[Path(entry.path).suffix[1:]] = formats.get(Path(entry.path).suffix[1:], 0) + 1
            duration = min(durations)
            seconds += duration
            frames += config.frames_for(round(duration * RATE))
            splits[item.split] = splits.get(item.split, 0) + 1
        assert row["items"] == len(manifest.items)
        assert row["seconds"] == pytest.approx(seconds)
        assert row["hours"] == pytest.approx(seconds / 3600)
        assert row["days"] == pytest.approx(seconds / 86400)
        assert row["frames"] == frames
        assert {split: values["items"] for split, values in row["splits"].items() if values["items"]} == splits
        assert row["sample_rates"] == rates and row["channels"] == channels and row["formats"] == formats
    assert rows["pairs"]["items"] == 3 and rows["pairs"]["seconds"] == pytest.approx(4.5)
    assert rows["vocals_a"]["seconds"] == pytest.approx(1.5 + 1.2 + 1.0)
    assert rows["vocals_a"]["sample_rates"] == {"44100": 2, "48000": 1}
    assert rows["vocals_a"]["channels"] == {"1": 1, "2": 2}
    assert rows["vocals_b"]["splits"]["valid"]["items"] == 2 and rows["vocals_a"]["splits"]["train"]["items"] == 3
    assert rows["instrumentals"]["rejects"] == {"unreadable": 1}
    assert rows["pairs"]["groups"] == 2


def test_role_totals_sum_the_libraries_of_a_role(libraries):
    section = libraries["report"]["manifests"]
    vocal_rows = [row for row in section["libraries"] if row["role"] == "vocal"]
    vocal = section["roles"]["vocal"]
    assert vocal["libraries"] == 2
    assert vocal["items"] == 5
    assert vocal["seconds"] == pytest.approx(sum(row["seconds"] for row in vocal_rows))
    assert vocal["days"] == pytest.approx(vocal["seconds"] / 86400)
    assert vocal["frames"] == sum(row["frames"] for row in vocal_rows)
    assert vocal["splits"]["train"]["items"] == 3 and vocal["splits"]["valid"]["items"] == 2
    assert set(section["roles"]) == {"pair", "vocal", "instrumental"}
    durations = section["durations"]["vocal"]
    assert durations["count"] == 5 and durations["max"] == pytest.approx(1.5)
    assert sum(durations["histogram"]["counts"]) == 5


def test_pair_offsets_summarise_the_scans_measurement(libraries):
    offsets = libraries["report"]["manifests"]["offsets"]
    assert offsets["pairs"] == 3
    assert offsets["by_samples"] == {"0": 2, str(OFFSET): 1}
    (shifted,) = offsets["nonzero"]
    assert shifted["offset_samples"] == OFFSET
    assert shifted["offset_ms"] == pytest.approx(1000 * OFFSET / RATE)
    assert offsets["offset_ms"]["max"] == pytest.approx(1000 * OFFSET / RATE)
    assert offsets["offset_ms"]["mean"] == pytest.approx(1000 * OFFSET / RATE / 3)


def test_item_levels_equal_direct_measures(libraries):
    content = libraries["report"]["manifests"]["content"]
    assert content["errors"] == []
    records = {(r["library"], r["id"]): r for r in content["items"]}
    checked = 0
    for path in libraries["manifests"].values():
        manifest = read_manifest(path)
        for item in manifest.items:
            record = records[(manifest.library, item.id)]
            for source in item.sources:
                audio = _decoded(manifest, item, source)
                measured = record["sources"][source]
                direct_loudness = loudness.integrated_loudness(audio, RATE)
                assert measured["loudness_lufs"] == pytest.approx(direct_loudness, abs=1e-9)
                assert measured["peak_dbfs"] == pytest.approx(loudness.peak_dbfs(audio), abs=1e-9)
                assert measured["silence_fraction"] == pytest.approx(loudness.silence_fraction(audio, RATE))
                assert measured["clipped_samples"] == loudness.clipped_samples(audio)
                assert measured["seconds"] == pytest.approx(audio.shape[1] / RATE)
                checked += 1
    assert checked == 3 * 2 + 5 + 4


def test_known_content_reads_as_built(libraries):
    content = libraries["report"]["manifests"]["content"]
    by_name = {}
    for path in libraries["manifests"].values():
        manifest = read_manifest(path)
        for item in manifest.items:
            by_name[Path(next(iter(item.files.values())).path).name] = (manifest.library, item.id)
    records = {(r["library"], r["id"]): r for r in content["items"]}
    silent = records[by_name["Singer X - Take 1.wav"]]["sources"]["vocal"]
    assert silent["silence_fraction"] == pytest.approx(SILENT_SECONDS / 1.5)
    clipped = records[by_name["Singer Y - Take 2.wav"]]["sources"]["vocal"]
    assert clipped["clipped_samples"] == 2 * CLIPPED_PER_CHANNEL
    assert clipped["peak_dbfs"] == pytest.approx(0.0)
    sine = records[by_name["sine.wav"]]["sources"]["instrumental"]
    assert sine["loudness_lufs"] == pytest.approx(-23.0, abs=0.1)
    vocal = content["sources"]["vocal/vocal"]
    assert vocal["clipping"] == {"samples": 4 * CLIPPED_PER_CHANNEL, "items": 2}  # the copy clips too
    assert vocal["silence_fraction"]["silent_seconds"] == pytest.approx(SILENT_SECONDS)
    assert vocal["silence_fraction"]["of_duration"] == pytest.approx(SILENT_SECONDS / vocal["seconds"])


def test_source_summaries_merge_item_values_exactly(libraries):
    content = libraries["report"]["manifests"]["content"]
    for key, summary in content["sources"].items():
        role, source = key.split("/")
        values = [r["sources"][source] for r in content["items"] if r["role"] == role]
        lufs = np.array([v["loudness_lufs"] for v in values if v["loudness_lufs"] is not None])
        assert summary["items"] == len(values)
        assert summary["loudness_lufs"]["count"] == lufs.size
        assert summary["loudness_lufs"]["mean"] == pytest.approx(lufs.mean(), abs=1e-9)
        assert summary["loudness_lufs"]["std"] == pytest.approx(lufs.std(), abs=1e-9)
        assert sum(summary["loudness_lufs"]["histogram"]["counts"]) == lufs.size
        silence = np.array([v["silence_fraction"] for v in values])
        assert summary["silence_fraction"]["mean"] == pytest.approx(silence.mean(), abs=1e-12)
        assert summary["peak_dbfs"]["max"] == pytest.approx(max(v["peak_dbfs"] for v in values))
        assert summary["clipping"]["samples"] == sum(v["clipped_samples"] for v in values)


def test_vocal_energy_of_pairs_equals_mixture_minus_instrumental(libraries):
    content = libraries["report"]["manifests"]["content"]
    manifest = read_manifest(libraries["manifests"]["pairs"])
    energies = []
    for item in manifest.items:
        mixture, instrumental = _decoded(manifest, item, "mixture"), _decoded(manifest, item, "instrumental")
        n = min(mixture.shape[1], instrumental.shape[1])
        vocal = mixture[:, :n].astype(np.float64) - instrumental[:, :n]
        direct = 10 * np.log10(np.sum(vocal**2) / np.sum(instrumental[:, :n].astype(np.float64) ** 2))
        record = next(r for r in content["items"] if r["id"] == item.id)
        assert record["vocal_energy_db"] == pytest.approx(direct, abs=1e-9)
        energies.append(direct)
    summary = content["pairs"]["vocal_energy_db"]
    assert summary["count"] == 3
    assert summary["mean"] == pytest.approx(np.mean(energies), abs=1e-9)
    assert summary["std"] == pytest.approx(np.std(energies), abs=1e-9)


def test_log_magnitude_moments_equal_numpy_over_all_frames(libraries):
    content = libraries["report"]["manifests"]["content"]
    eps = StatsSettings().log_eps
    config = StftConfig()
    rows: dict[str, list[np.ndarray]] = {}
    for path in libraries["manifests"].values():
        manifest = read_manifest(path)
        for item in manifest.items:
            for source in item.sources:
                spec = stft(_decoded(manifest, item, source), config)  # (2, bins, frames)
                log_magnitude = np.log(np.abs(spec).astype(np.float64) + eps)
                rows.setdefault(f"{manifest.role}/{source}", []).append(
                    log_magnitude.transpose(0, 2, 1).reshape(-1, config.bins))
    assert set(rows) == set(content["log_magnitude"])
    for key, parts in rows.items():
        values = np.concatenate(parts)
        entry = content["log_magnitude"][key]
        assert entry["rows"] == values.shape[0]
        np.testing.assert_allclose(entry["mean"], values.mean(axis=0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(entry["std"], values.std(axis=0), rtol=1e-5, atol=1e-9)


def test_duplicates_inside_across_libraries_roles_and_splits(libraries):
    findings = libraries["report"]["manifests"]["integrity"]["duplicates"]
    by_paths = {tuple(sorted(o["path"] for o in f["occurrences"])): f for f in findings}
    assert len(findings) == 3
    inside = by_paths[("dup_a.wav", "dup_b.wav")]
    assert inside["kinds"][0] == "within_library" and "across_libraries" not in inside["kinds"]
    vocal_copy = by_paths[("Singer Y - Take 2.wav", "Singer Z - Copy.wav")]
    assert vocal_copy["kinds"] == ["across_libraries", "across_splits"]
    cross_role = by_paths[("copied_inst.wav", "instruments/Alpha - One_inst.wav")]
    assert {"across_libraries", "across_roles"} <= set(cross_role["kinds"])
    splits = {o["split"] for o in cross_role["occurrences"]}
    assert ("across_splits" in cross_role["kinds"]) == (len(splits) > 1)
    assert findings[0]["kinds"].count("across_splits") == 1  # split-crossing duplicates are listed first


def test_group_leak_across_libraries_of_a_role(libraries):
    leaks = libraries["report"]["manifests"]["integrity"]["group_leaks"]
    assert len(leaks) == 1
    (leak,) = leaks
    assert leak["role"] == "vocal" and leak["group"] == "singer x"
    assert leak["libraries"] == ["vocals_a", "vocals_b"]
    assert [m["paths"] for m in leak["splits"]["train"]] == [["Singer X - Take 1.wav"]]
    assert [m["paths"] for m in leak["splits"]["valid"]] == [["Singer X - Take 3.wav"]]


def test_report_is_strict_json_and_merging_order_does_not_matter(libraries):
    report = libraries["report"]
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["kind"] == "vr-stats"
    with ThreadPoolExecutor(2) as executor:  # results arrive in another order; merges must agree
        again = describe(list(libraries["manifests"].values()), executor=executor)
    first, second = report["manifests"]["content"], again["manifests"]["content"]
    for key, entry in first["log_magnitude"].items():
        np.testing.assert_allclose(second["log_magnitude"][key]["mean"], entry["mean"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(second["log_magnitude"][key]["std"], entry["std"], rtol=1e-10, atol=1e-12)
    assert second["items"] == first["items"]


def test_inputs_root_and_errors(libraries, tmp_path):
    manifests = libraries["manifests"]
    # Rejects files matched by a glob beside their manifests are skipped, not read as manifests.
    with_rejects = [manifests["instrumentals"], rejects_path(manifests["instrumentals"])]
    report = describe(with_rejects, content=False)
    assert report["manifests"]["content"] is None
    assert len(report["manifests"]["libraries"]) == 1
    # The files moved: --root finds them.
    moved = tmp_path / "moved"
    shutil.copytree(libraries["roots"]["vocals_b"], moved)
    report = describe([manifests["vocals_b"]], root=moved)
    assert report["manifests"]["content"]["errors"] == []
    with pytest.raises(VRDataError, match="single manifest"):
        describe(list(manifests.values()), root=moved)
    with pytest.raises(VRDataError, match="neither a manifest nor a store"):
        describe([tmp_path])
    with pytest.raises(VRDataError, match="no such manifest"):
        describe([tmp_path / "missing.jsonl"])


def test_missing_file_is_reported_not_fatal(libraries, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(libraries["roots"]["vocals_b"], root)
    (root / "Singer X - Take 3.wav").unlink()
    report = describe([libraries["manifests"]["vocals_b"]], root=root)
    content = report["manifests"]["content"]
    (error,) = content["errors"]
    assert "Take 3" in error["error"]
    assert content["sources"]["vocal/vocal"]["items"] == 1


def test_plots_are_written(libraries, tmp_path):
    written = write_plots(libraries["report"], tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["manifests-durations.png", "manifests-loudness.png", "manifests-spectrum.png",
                     "manifests-splits.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_cli_prints_tables_and_writes_json_and_plots(libraries, tmp_path):
    from pipelines.vrdata import app

    manifests = [str(p) for p in libraries["manifests"].values()]
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["stats", *manifests, "--json", str(out), "--plots", str(tmp_path / "png"),
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "days of vocal" in result.output and "singer x" in result.output
    assert "BS.1770-4" in result.output
    written = json.loads(out.read_text())
    expected = libraries["report"]["manifests"]
    assert written["manifests"]["roles"] == expected["roles"]
    assert written["manifests"]["integrity"] == expected["integrity"]
    assert len(list((tmp_path / "png").glob("*.png"))) == 4
    failed = CliRunner().invoke(app, ["stats", str(tmp_path / "nothing.jsonl")])
    assert failed.exit_code == 2 and "error:" in failed.output and "Traceback" not in failed.output
