"""The package layout: dependencies point one way, `pipelines -> vr_model -> vr_data`, and inside
each package too; the mixer imports light.

`vr_data` layers, lowest first: the base modules (`errors`, `io`, `parallel`), then `audio` and
`dsp`, then `catalog`, then `store` and `quality` (side by side), then `mixer`, `stats` and `testing`
(side by side: none of them imports another). A module may import its own layer's package and any lower layer, never a
higher one; `vr_data` never imports `vr_model` or `pipelines`.

`vr_model` rooms: `network` (the U-Net, its config, presets, checkpoints) is used by `train`
and by `inference` (applying a trained network); neither uses the other, except that
`train/validation.py` calls `vr_model.inference.evaluate`'s public scorer. `vr_model` never
imports `pipelines`.

`pipelines`: the CLI modules (`vrtrain`, `vrdata`, `entry`) import the command modules
(`*_cmd`), which import the shared ones (`apps`, `common`, `allocator`, `quality_tables`); never
back up. Every command module is imported by name by the CLI whose app it registers on (no
importlib).
Function-level imports count everywhere.
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


# ----------------------------------------------------------------------------- vr_model

MODEL = PACKAGE.parent / "vr_model"
ROOMS = {"__init__": {"network"}, "network": set(), "train": {"network"}, "inference": {"network"}}
# The one arrow between the rooms: validation scores songs with evaluation's public function.
ROOM_EXCEPTIONS = {("vr_model/train/validation.py", "vr_model.inference.evaluate")}


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "vr_model":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _model_violations(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent)
        own = _room(".".join(relative.with_suffix("").parts))
        if own not in ROOMS:
            problems.append(f"{relative} is in no room ({', '.join(ROOMS)})")
            continue
        for line, module, names in _imports_with_names(path):
            if module.split(".")[0] == "pipelines":
                problems.append(f"{relative}:{line} imports {module} (vr_model never imports pipelines)")
                continue
            room = _room(module)
            if room is None or room == own:
                continue
            if (relative.as_posix(), module) in ROOM_EXCEPTIONS and not any(name.startswith("_") for name in names):
                continue
            if room not in ROOMS[own]:
                problems.append(f"{relative}:{line} ({own}) imports {module} ({room})")
    return problems


def _imports_with_names(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every absolute import of `path`: (line, module, imported names), at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
            if node.module in ("vr_model", "pipelines"):   # `from vr_model import train` names a module
                found += [(node.lineno, f"{node.module}.{alias.name}", []) for alias in node.names]
    return found


def test_vr_model_rooms_point_to_the_network_only():
    assert _model_violations(MODEL) == []


def test_the_room_check_catches_training_importing_inference_and_a_private_scorer(tmp_path):
    fake = tmp_path / "vr_model"
    for room in ("network", "train", "inference"):
        (fake / room).mkdir(parents=True)
    (fake / "train" / "loop.py").write_text("from vr_model.inference.separate import Separator\n")
    (fake / "train" / "validation.py").write_text("from vr_model.inference.evaluate import _private\n")
    (fake / "inference" / "bad.py").write_text("def f():\n    import vr_model.train.loop\n")
    (fake / "network" / "unet.py").write_text("from pipelines.common import console\n")
    problems = "\n".join(_model_violations(fake))
    assert "train/loop.py:1 (train) imports vr_model.inference.separate" in problems
    assert "train/validation.py:1 (train) imports vr_model.inference.evaluate" in problems
    assert "inference/bad.py:2 (inference) imports vr_model.train.loop" in problems
    assert "network/unet.py:1 imports pipelines.common" in problems


# ----------------------------------------------------------------------------- pipelines

PIPELINES = PACKAGE.parent / "pipelines"
CLI_MODULES = {"vrtrain": "vrtrain_app", "vrdata": "vrdata_app"}
TOP = {"vrtrain", "vrdata", "entry"}      # may import anything in pipelines
SHARED = {"apps", "common", "allocator", "quality_tables"}  # import no pipelines module but each other


def _pipelines_violations(package: Path) -> list[str]:
    problems = []
    registered_on: dict[str, str] = {}    # command module -> the app it decorates
    imported_by: dict[str, set[str]] = {name: set() for name in CLI_MODULES}
    for path in sorted(package.glob("*.py")):
        own = path.stem
        for line, module, names in _imports_with_names(path):
            top = module.split(".")[0]
            if top != "pipelines":
                continue
            target = module.split(".")[1] if "." in module else None
            if target is None:
                continue
            if own in CLI_MODULES:
                imported_by[own].add(target)
            if own.endswith("_cmd"):
                if target in TOP or target.endswith("_cmd"):
                    problems.append(f"pipelines/{path.name}:{line} imports {module} (a command module imports "
                                    "only apps, common, allocator and quality_tables)")
                if target == "apps":
                    registered_on.update({own: name for name in names if name in CLI_MODULES.values()})
            elif own in SHARED and target not in SHARED:
                problems.append(f"pipelines/{path.name}:{line} imports {module} (shared modules import no "
                                "command or CLI module)")
        if "importlib" in {module for _, module, _ in _imports_with_names(path)}:
            problems.append(f"pipelines/{path.name} uses importlib (register commands by plain imports)")
    for command, app in registered_on.items():
        cli = next(name for name, app_name in CLI_MODULES.items() if app_name == app)
        if command not in imported_by[cli]:
            problems.append(f"pipelines/{command}.py registers on {app} but pipelines/{cli}.py does not import it")
    return problems


def test_pipelines_import_down_and_every_command_module_is_registered_by_name():
    assert _pipelines_violations(PIPELINES) == []


def test_the_pipelines_check_catches_a_cycle_and_an_unregistered_command(tmp_path):
    fake = tmp_path / "pipelines"
    fake.mkdir()
    (fake / "apps.py").write_text("import typer\nvrtrain_app = typer.Typer()\n")
    (fake / "vrtrain.py").write_text("import importlib\nfrom pipelines.apps import vrtrain_app as app\n")
    (fake / "new_cmd.py").write_text("from pipelines.apps import vrtrain_app as app\nfrom pipelines.vrtrain import x\n")
    problems = "\n".join(_pipelines_violations(fake))
    assert "new_cmd.py:2 imports pipelines.vrtrain" in problems
    assert "vrtrain.py uses importlib" in problems
    assert "new_cmd.py registers on vrtrain_app but pipelines/vrtrain.py does not import it" in problems


@pytest.mark.parametrize("lower, higher", [("vr_data", "vr_model"), ("vr_data", "pipelines"), ("vr_model", "pipelines")])
def test_packages_point_down_only(lower, higher):
    """`pipelines -> vr_model -> vr_data`, function-level imports included."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for path in sorted((PACKAGE.parent / lower).rglob("*.py"))
                 for line, module, _ in _imports_with_names(path) if module.split(".")[0] == higher]
    assert offenders == []
