"""The package layout: dependencies inside `vr_data` point one way, and the mixer imports light.

Layers, lowest first: the base modules (`errors`, `io`, `parallel`), then `audio` and `dsp`,
then `catalog`, then `store` and `quality` (side by side), then `mixer`, `stats` and `testing` (side by side: none of them
imports another). A module may import its own layer's package and any lower layer, never a
higher one; `vr_data` never imports `vr_model` or `pipelines`. Function-level imports count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vr_data"
LAYERS = {
    "errors": 0, "io": 0, "parallel": 0, "__init__": 0,
    "audio": 1, "dsp": 1,
    "catalog": 2,
    "store": 3, "quality": 3,
    "mixer": 4, "stats": 4, "testing": 4,
}


def _group(module: str) -> str | None:
    """`vr_data.store.reader` -> `store`; `vr_data` -> `__init__`; other packages -> None."""
    parts = module.split(".")
    if parts[0] != "vr_data":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports (absolute names), with the line, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from vr_data import errors` names a submodule (`__version__` does not)
            if node.module == "vr_data":
                found += [(node.lineno, f"vr_data.{alias.name}") for alias in node.names if alias.name in LAYERS]
    return found


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _group(".".join(relative.parts))
        own_layer = LAYERS[own]
        for line, module in _imports(path):
            if module.split(".")[0] in ("vr_model", "pipelines"):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} (vr_data is the bottom package)")
                continue
            group = _group(module)
            if group is None or group == own or module in ("vr_data", "vr_data.errors") and group == "__init__":
                continue
            layer = LAYERS.get(group)
            if layer is None:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports unknown module {module}")
            elif layer > own_layer or (layer == own_layer and layer > 0):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}, layer {own_layer}) imports "
                                f"{module} ({group}, layer {layer})")
    return problems


def test_every_vr_data_module_belongs_to_a_layer():
    groups = {_group(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert groups <= set(LAYERS), sorted(groups - set(LAYERS))


def test_vr_data_imports_point_down_only():
    assert _violations() == []


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a catalog module importing the store is reported."""
    fake = tmp_path / "vr_data"
    (fake / "catalog").mkdir(parents=True)
    (fake / "catalog" / "bad.py").write_text("def f():\n    from vr_data.store.build import build_store\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert any("imports vr_data.store.build" in problem for problem in _violations())


@pytest.mark.parametrize("module", ["vr_data.mixer", "vr_data.stats", "vr_data.store"])
def test_light_imports_pull_in_no_builder_report_or_loudness(module):
    """What a spawned DataLoader worker imports: no store builder, stats report or loudness."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                            capture_output=True, text=True, check=True)
    loaded = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    heavy = {"vr_data.store.build", "vr_data.stats.report", "vr_data.audio.loudness", "vr_data.catalog.scan"}
    assert not loaded & heavy, sorted(loaded & heavy)
