"""The mixer under real DDP: torchrun, 2 CPU processes, gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_gloo_ranks_get_equal_batches_and_disjoint_examples(mixer_store, tmp_path):
    out = tmp_path / "ranks.json"
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               str(Path(__file__).with_name("ddp_mixer_main.py")), str(mixer_store), str(out)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["batches"] == ranks[1]["batches"] == 50 // (4 * 2)
    assert not set(ranks[0]["indices"]) & set(ranks[1]["indices"])
