"""The fast allocator: the environment it chooses, the re-exec, its children, and bit-identical losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.allocator import (
    ACTIVE_VARIABLE, CHOICE_VARIABLE, GLIBC_TUNABLES, allocator_in_use, fast_allocator_environ, find_tcmalloc,
    shipped_environ,
)

ROOT = Path(__file__).resolve().parents[1]
TCMALLOC = find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason="no tcmalloc library (make installs it where apt allows)")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and glibc tunables are Linux")


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> str:
    """stdout of `python -c code` in the repository root with exactly `env`."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fresh_environ(**changes: str) -> dict[str, str]:
    """This environment as a user's shell would have it: none of the allocator's variables."""
    env = shipped_environ(os.environ)
    del env[CHOICE_VARIABLE], env[ACTIVE_VARIABLE]
    env["PYTHONPATH"] = str(ROOT)
    env.update(changes)
    return env


def test_tcmalloc_is_preferred_and_glibc_tunables_are_the_fallback():
    allocator, env = fast_allocator_environ({"LD_PRELOAD": "/opt/libfoo.so"}, "/usr/lib/libtcmalloc_minimal.so.4")
    assert allocator == "tcmalloc" == env[ACTIVE_VARIABLE]
    assert env["LD_PRELOAD"] == "/usr/lib/libtcmalloc_minimal.so.4:/opt/libfoo.so"  # the user's preload kept
    assert "GLIBC_TUNABLES" not in env
    allocator, env = fast_allocator_environ({"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off"}, None)
    assert allocator == "glibc-tunables"
    assert env["GLIBC_TUNABLES"] == f"glibc.cpu.x86_shstk=off:{GLIBC_TUNABLES}"
    assert "LD_PRELOAD" not in env


def test_user_choices_are_respected():
    assert fast_allocator_environ({CHOICE_VARIABLE: "system"}, "/lib/libtcmalloc.so.4")[0] == "system"
    assert fast_allocator_environ({CHOICE_VARIABLE: "glibc"}, "/lib/libtcmalloc.so.4")[0] == "glibc-tunables"
    allocator, env = fast_allocator_environ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "/lib/libtcmalloc.so.4")
    assert allocator == "preloaded" and env["LD_PRELOAD"] == "/usr/lib/libjemalloc.so.2"
    with pytest.raises(ValueError, match="VR_MALLOC"):
        fast_allocator_environ({CHOICE_VARIABLE: "fastest"}, None)
    with pytest.raises(ValueError, match="libtcmalloc-minimal4"):
        fast_allocator_environ({CHOICE_VARIABLE: "tcmalloc"}, None)


def test_find_tcmalloc_searches_the_given_dirs_in_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (second / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert find_tcmalloc([str(first), str(second)]) == str(second / "libtcmalloc_minimal.so.4")
    (first / "libtcmalloc.so.4").write_bytes(b"")
    assert find_tcmalloc([str(first), str(second)]) == str(first / "libtcmalloc.so.4")
    assert find_tcmalloc([str(tmp_path / "nowhere")]) is None


def test_shipped_environ_removes_every_change_and_stops_the_re_exec():
    _, fast = fast_allocator_environ({"HOME": "/root"}, "/lib/libtcmalloc.so.4")
    assert shipped_environ(fast) == {"HOME": "/root", CHOICE_VARIABLE: "system", ACTIVE_VARIABLE: "system"}


REPORT = """
    import json, os, sys
    from pipelines.allocator import allocator_in_use, ensure_fast_allocator
    print(json.dumps({"returned": ensure_fast_allocator(), "in_use": allocator_in_use(), "pid": os.getpid()}))
"""


@linux_only
def test_ensure_re_executes_once_under_the_fast_allocator():
    expected = "tcmalloc" if TCMALLOC else "glibc-tunables"
    lines = run_python(REPORT, fresh_environ()).splitlines()
    assert len(lines) == 1  # the first image never printed: it was replaced
    report = json.loads(lines[0])
    assert report["returned"] == report["in_use"] == expected
    report = json.loads(run_python(REPORT, fresh_environ(**{CHOICE_VARIABLE: "glibc"})))
    assert report["returned"] == report["in_use"] == "glibc-tunables"
    report = json.loads(run_python(REPORT, fresh_environ(**{CHOICE_VARIABLE: "system"})))
    assert report["returned"] == "system" and report["in_use"] == "glibc"


@linux_only
def test_this_test_session_runs_under_the_fast_allocator():
    if os.environ.get(CHOICE_VARIABLE) == "system":
        pytest.skip("VR_MALLOC=system chosen for this session")
    assert allocator_in_use() == ("tcmalloc" if TCMALLOC else "glibc-tunables")


SPAWNED = """
    import json, multiprocessing
    from pipelines.allocator import allocator_in_use, ensure_fast_allocator

    if __name__ == "__main__":
        ensure_fast_allocator()
        context = multiprocessing.get_context("spawn")  # as the mixer's DataLoader workers
        with context.Pool(1) as pool:
            print(json.dumps({"parent": allocator_in_use(), "worker": pool.apply(allocator_in_use)}))
"""


@linux_only
def test_spawned_workers_inherit_the_allocator(tmp_path):
    script = tmp_path / "spawned.py"
    script.write_text(textwrap.dedent(SPAWNED))
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=fresh_environ(), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["worker"] == report["parent"] == ("tcmalloc" if TCMALLOC else "glibc-tunables")


DASK = """
    import json
    from pipelines.allocator import allocator_in_use, ensure_fast_allocator
    from pipelines.common import dask_executor

    if __name__ == "__main__":
        ensure_fast_allocator()
        with dask_executor(1, None) as executor:
            print(json.dumps({"parent": allocator_in_use(), "worker": executor.submit(allocator_in_use).result()}))
"""


@linux_only
@pytest.mark.slow
def test_dask_build_workers_inherit_the_allocator(tmp_path):
    script = tmp_path / "dask_workers.py"
    script.write_text(textwrap.dedent(DASK))
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=fresh_environ(), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["worker"] == report["parent"] == ("tcmalloc" if TCMALLOC else "glibc-tunables")


STEPS = """
    import hashlib, json, torch
    from pipelines.allocator import allocator_in_use
    from vr_model import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("tiny").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(3):
        mixture = torch.rand(2, 2, 1025, 48)
        instrumental = mixture * torch.rand_like(mixture)
        loss = torch.nn.functional.l1_loss(model(mixture) * mixture, instrumental)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item().hex())
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(json.dumps({"allocator": allocator_in_use(), "losses": losses, "weights": weights}))
"""


@linux_only
def test_losses_and_weights_are_bit_identical_under_every_allocator():
    """Three AdamW steps of `tiny`: the allocator moves memory, never a bit of the arithmetic."""
    choices = ["system", "glibc"] + (["tcmalloc"] if TCMALLOC else [])
    runs = {choice: json.loads(run_python(STEPS, fast_allocator_environ(fresh_environ(**{CHOICE_VARIABLE: choice}),
                                                                        TCMALLOC)[1]))
            for choice in choices}
    assert runs["system"]["allocator"] == "glibc"
    assert runs["glibc"]["allocator"] == "glibc-tunables"
    if TCMALLOC:
        assert runs["tcmalloc"]["allocator"] == "tcmalloc"
    reference = runs.pop("system")
    assert len(set(reference["losses"])) == 3  # the steps train: each loss differs
    for choice, run in runs.items():
        assert run["losses"] == reference["losses"], choice
        assert run["weights"] == reference["weights"], choice


@pytest.mark.parametrize("name", ["vrtrain", "vrdata"])
def test_console_scripts_choose_the_allocator_before_importing_the_cli(name, monkeypatch):
    import tomllib

    import pipelines.allocator
    from pipelines import entry

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[name] == f"pipelines.entry:{name}"
    loaded_at_call = []

    def record_and_stop():
        loaded_at_call.append(f"pipelines.{name}" in sys.modules)
        raise SystemExit(0)

    monkeypatch.delitem(sys.modules, f"pipelines.{name}", raising=False)
    monkeypatch.setattr(pipelines.allocator, "ensure_fast_allocator", record_and_stop)
    with pytest.raises(SystemExit):
        getattr(entry, name)()
    assert loaded_at_call == [False]
