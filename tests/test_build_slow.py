"""End to end: a build SIGKILLed mid-way and rerun, and a build on a 2-process dask LocalCluster,
both give a store identical (every array value, every tar byte) to an uninterrupted in-process build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_build_support import GEOMETRY, STFT, assert_same_contents, load, store_contents
from pipelines.common import dask_executor
from vr_data.store.build import build_store
from vr_data.store import open_store

REPO = Path(__file__).resolve().parents[1]


def _command(corpus, out: Path) -> list[str]:
    manifests = [str(corpus[layout]) for layout in ("pairs", "vocals", "instrumentals", "pretrain")]
    return [sys.executable, "-c", "from pipelines.vrdata import main; main()", "build-shards", *manifests,
            "--out", str(out), "--workers", "0", "--n-fft", str(STFT.n_fft), "--hop-length", str(STFT.hop_length),
            "--chunk-frames", str(GEOMETRY.chunk_frames), "--shard-frames", str(GEOMETRY.shard_frames),
            "--segment-frames", str(GEOMETRY.segment_frames),
            "--wds-shard-mb", str(GEOMETRY.wds_shard_bytes / 2**20)]


def _kill_after(command: list[str], done_dir: Path, records: int) -> None:
    """Run `command` and SIGKILL it as soon as `records` done-records exist."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "VR_PROGRESS": "0"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if done_dir.exists() and len(list(done_dir.glob("*.json"))) >= records:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]


@pytest.mark.slow
def test_sigkilled_build_resumes_to_identical_store(corpus, built_store, tmp_path):
    out = tmp_path / "store"
    command = _command(corpus, out)
    done_dir = out / ".build" / "done"
    _kill_after(command, done_dir, 1)
    assert json.loads((out / "store.json").read_text())["complete"] is False
    _kill_after(command, done_dir, 4)
    assert json.loads((out / "store.json").read_text())["complete"] is False
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "VR_PROGRESS": "0"})
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout
    assert_same_contents(store_contents(built_store), store_contents(out))
    assert not list(out.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_local_cluster_build_matches_in_process_build(corpus, built_store, tmp_path):
    out = tmp_path / "store"
    with dask_executor(2, None) as executor:
        result = build_store(load(corpus), out, stft=STFT, geometry=GEOMETRY, executor=executor)
    assert result.count("built") == len(open_store(built_store).tracks)
    assert_same_contents(store_contents(built_store), store_contents(out))
