"""benchmarks/gpu_check.sh --dry: the prepared GPU check runs end to end on the CPU, so it does
not rot between the sessions that have a GPU (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_prints_every_row_of_the_table(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable}
    completed = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--workdir", str(tmp_path)],
                               capture_output=True, text=True, cwd=ROOT, env=environment, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = completed.stdout
    assert "dry run: not GPU figures" in table
    for row in ("step 16 fr, ckpt off", "step 16 fr, ckpt on", "trainer 32 fr, 1 workers", "separate (tiny",
                "vrtrain eval (2 x 3 s)"):
        assert row in table, f"{row!r} missing from:\n{table}"
    assert "MFU" in table and "data wait" in table and "s audio/s" in table and "s/song" in table
    assert not list(tmp_path.iterdir()), "the work folder is left behind"
