"""Building stores when things go wrong (issue 11, points 8-13): a wrong root, missing files,
two builders, a refused append, odd track ids, relative manifest paths, a full disk, and the
dry run's estimate."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tone
from test_build_support import GEOMETRY, STFT
from vr_data import errors
from vr_data.audio import write_audio
from vr_data.catalog.manifest import read_manifest, write_manifest
from vr_data.catalog.scan import ScanOptions, scan
from vr_data.errors import VRDataError
from vr_data.io import exclusive_lock
from vr_data.store import open_store
from vr_data.store.build import build_store, plan_store
from vr_data.store.plan import Geometry
from vr_data.store.verify import verify_store


def _library(folder: Path, names: list[str], seconds: float = 2.0) -> Path:
    for index, name in enumerate(names):
        write_audio(folder / name, tone(seconds, seed=index), 44100)
    return folder


def _manifest(tmp_path: Path, name: str, files: list[str]) -> Path:
    root = _library(tmp_path / name, files)
    return write_manifest(tmp_path / f"{name}.jsonl", scan(root, ScanOptions(layout="vocals")).manifest)


def _build(manifests, out, **kwargs):
    return build_store([read_manifest(m) if isinstance(m, Path) else m for m in manifests], out,
                       stft=STFT, geometry=GEOMETRY, **kwargs)


def test_a_wrong_root_is_refused_before_anything_is_written(tmp_path):
    manifest = _manifest(tmp_path, "vocals", ["a.wav", "b.wav"])
    with pytest.raises(VRDataError) as raised:
        _build([read_manifest(manifest, root=tmp_path / "wrong")], tmp_path / "store")
    assert "does not exist here" in str(raised.value) and "M.jsonl=ROOT" in str(raised.value)
    assert not (tmp_path / "store").exists()
    result = _build([manifest], tmp_path / "store")  # the right root then builds, nothing to repair
    assert result.count("built") == 2


def test_a_missing_source_keeps_the_store_incomplete_and_a_rerun_finishes_it(tmp_path):
    manifest = _manifest(tmp_path, "vocals", ["a.wav", "b.wav", "c.wav"])
    hidden = tmp_path / "b.wav.away"
    (tmp_path / "vocals" / "b.wav").rename(hidden)
    with pytest.raises(VRDataError, match=r"1 of 3 tracks could not read their files .*rerun the same command"):
        _build([manifest], tmp_path / "store")
    assert json.loads((tmp_path / "store" / "store.json").read_text())["complete"] is False
    with pytest.raises(VRDataError, match="incomplete"):
        open_store(tmp_path / "store")
    hidden.rename(tmp_path / "vocals" / "b.wav")
    result = _build([manifest], tmp_path / "store")
    assert (result.count("skipped"), result.count("built"), result.count("rejected")) == (2, 1, 0)
    assert len(open_store(tmp_path / "store").tracks) == 3


def test_a_second_builder_is_refused_while_the_store_is_in_use(tmp_path):
    manifest = _manifest(tmp_path, "vocals", ["a.wav"])
    out = tmp_path / "store"
    out.mkdir()
    (out / ".build").mkdir()
    stray = out / ".build" / ".x.json.tmp-1"  # a live build's temporary file: must survive
    stray.write_text("{}")
    with exclusive_lock(out / ".build" / "lock", "vrdata build-shards", subject=out):
        with pytest.raises(VRDataError) as raised:
            _build([manifest], out)
    assert str(raised.value).startswith(f"{out}: in use by PID ")
    assert stray.exists() and not (out / "plan.json").exists()
    assert _build([manifest], out).count("built") == 1  # the lock went with its holder


def test_a_refused_append_leaves_the_plan_as_it_was(tmp_path):
    first = _manifest(tmp_path, "first", ["a.wav", "b.wav"])
    extra = _manifest(tmp_path, "extra", ["c.wav"])
    out = tmp_path / "store"

    def stop(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build([first], out, on_track=stop)
    plan = (out / "plan.json").read_bytes()
    with pytest.raises(VRDataError, match="its manifest was not given"):
        _build([extra], out, append=True)
    assert (out / "plan.json").read_bytes() == plan
    assert _build([first], out).count("built") == 1  # the original command still finishes


def test_track_ids_must_match_in_full(tmp_path):
    manifest = read_manifest(_manifest(tmp_path, "vocals", ["a.wav"]))
    manifest.items[0].id += "\n"
    with pytest.raises(VRDataError, match="not usable as a store key"):
        _build([manifest], tmp_path / "store")


def test_manifests_of_only_rejected_or_no_items(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = write_manifest(tmp_path / "empty.jsonl", scan(empty, ScanOptions(layout="vocals")).manifest)
    with pytest.raises(VRDataError, match="no items"):
        _build([manifest], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_stores_record_absolute_manifest_paths_and_verify_from_anywhere(tmp_path, monkeypatch):
    _manifest(tmp_path, "vocals", ["a.wav"])
    monkeypatch.chdir(tmp_path)
    _build([Path("vocals.jsonl")], Path("store"))
    recorded = json.loads((tmp_path / "store" / "store.json").read_text())["manifests"][0]["path"]
    assert recorded == str(tmp_path / "vocals.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = verify_store(tmp_path / "store")
    assert report.ok and report.notes == []


def test_a_full_disk_is_one_error_naming_the_store(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path, "vocals", ["a.wav"])

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vr_data.store.wds.TrackTarWriter._write", full)
    with pytest.raises(VRDataError) as raised:
        _build([manifest], tmp_path / "store")
    assert str(raised.value) == f"{tmp_path / 'store'}: cannot write the store (no space left on device)"
    assert raised.value.code == "unwritable"


def test_dry_run_writes_nothing_and_estimates_the_size(tmp_path):
    manifest = _manifest(tmp_path, "vocals", ["a.wav", "b.wav", "c.wav"])
    out = tmp_path / "store"
    dry = plan_store([read_manifest(manifest)], out, stft=STFT, geometry=GEOMETRY)
    assert not out.exists()
    assert len(dry.to_build) == 3 and dry.done == 0 and dry.new_store and dry.sample_tracks == 3
    built = _build([manifest], out)
    # The WebDataset layout is computed, the Zarr size measured on samples: both near the real sizes.
    assert abs(dry.wds_bytes - built.wds_bytes) / built.wds_bytes < 0.05, (dry.wds_bytes, built.wds_bytes)
    assert 0.5 < dry.zarr_bytes / built.zarr_bytes < 2.0, (dry.zarr_bytes, built.zarr_bytes)
    again = plan_store([read_manifest(manifest)], out)
    assert again.to_build == [] and again.done == 3 and not again.new_store


def test_build_time_reject_of_a_silent_source_uses_the_same_words_as_scan(tmp_path):
    manifest = read_manifest(_manifest(tmp_path, "vocals", ["a.wav"]))
    write_audio(tmp_path / "vocals" / "a.wav", tone(2.0) * 0, 44100)
    from vr_data.store.build import BuildOptions

    result = _build([manifest], tmp_path / "store", options=BuildOptions(verify_hashes=False))
    assert [(r.code, r.reason) for r in result.rejects] == [(errors.SILENT, "vocal is silent (every sample is zero)")]


REPO = Path(__file__).resolve().parents[1]


def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.vrdata", "build-shards", *arguments, "--workers", "0",
            "--n-fft", str(STFT.n_fft), "--hop-length", str(STFT.hop_length), "--chunk-frames", str(GEOMETRY.chunk_frames),
            "--shard-frames", str(GEOMETRY.shard_frames), "--segment-frames", str(GEOMETRY.segment_frames)]


@pytest.mark.slow
def test_two_builds_racing_for_a_new_store_leave_one_consistent_store(tmp_path):
    # Other items in each: a build that starts after the other has finished is refused too
    # ("--append"), not told "nothing to do" for items the store already holds.
    manifests = [_manifest(tmp_path, name, files) for name, files in (("left", ["a.wav", "b.wav"]),
                                                                       ("right", ["c.wav", "d.wav"]))]
    environment = {**os.environ, "VR_PROGRESS": "0"}
    for attempt in range(1):  # before the lock, about 2 runs in 10 left two plans in one store
        out = tmp_path / f"store{attempt}"
        processes = [subprocess.Popen(_cli(str(manifest), "--out", str(out)), cwd=REPO, env=environment,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for manifest in manifests]
        results = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
        winners = [index for index, (code, _) in enumerate(results) if code == 0]
        assert len(winners) == 1, results
        code, message = results[1 - winners[0]]
        assert code == 2 and ("in use by PID" in message or "--append" in message), message
        plan = json.loads((out / "plan.json").read_text())
        assert [ref["path"] for ref in plan["manifests"]] == [str(manifests[winners[0]])]
        assert open_store(out).meta.complete
        rerun = subprocess.run(_cli(str(manifests[winners[0]]), "--out", str(out)), cwd=REPO, env=environment,
                               capture_output=True, text=True)
        assert rerun.returncode == 0 and "nothing to do" in rerun.stdout


@pytest.mark.slow
def test_a_really_full_disk_during_a_build(tmp_path):
    """ENOSPC from tensorstore (Zarr) and from the tar writer, on a tiny tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    manifest = _manifest(tmp_path, "vocals", ["a.wav", "b.wav", "c.wav", "d.wav"])
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for wds in (False, True):
            geometry = Geometry(chunk_frames=GEOMETRY.chunk_frames, shard_frames=GEOMETRY.shard_frames,
                                segment_frames=GEOMETRY.segment_frames, wds=wds)
            with pytest.raises(VRDataError, match=r"cannot write the store \(no space left on device\)"):
                build_store([read_manifest(manifest)], disk / f"store-{wds}", stft=STFT, geometry=geometry)
            assert json.loads((disk / f"store-{wds}" / "store.json").read_text())["complete"] is False
            shutil.rmtree(disk / f"store-{wds}")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
