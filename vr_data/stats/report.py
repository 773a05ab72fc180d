"""`describe`: the whole `vrdata stats` report of manifests and stores as one JSON-ready dict.

Each input path is a manifest (a `.jsonl` file with a vr-manifest header) or a store directory
(with `store.json`). All manifests form one section (totals per library and role, pair offsets,
duplicates and group leaks across all of them, and content statistics decoded from the audio);
each store its own (totals from its records, group leaks, spectral statistics streamed from its
arrays, saved to `STORE/stats.json`). The structure is documented in docs/stats.md; non-finite
numbers (the loudness of silence) are written as null.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vr_data import __version__, errors
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import Manifest, read_manifest, split_manifest_spec, without_rejects_files
from vr_data.parallel import map_unordered
from vr_data.stats.content import ContentSummary, item_tasks, measure_item
from vr_data.stats.integrity import ItemRef, duplicates, file_occurrences, group_leaks, manifest_items
from vr_data.quality.duplicates import content_duplicates
from vr_data.quality.pair_report import pair_check_report
from vr_data.store.normalisation import save_store_stats
from vr_data.stats.settings import StatsSettings
from vr_data.stats.store_stats import StoreContent, measure_track, store_durations, store_rows, track_tasks
from vr_data.stats.totals import durations_by_role, manifest_durations, manifest_row, pair_offsets, role_totals
from vr_data.store import open_store, remote
from vr_data.store.format import STORE_JSON

REPORT_KIND = "vr-stats"
REPORT_SCHEMA = 1


@dataclass
class ProgressHooks:
    """Callbacks for a progress display: `start(description, total_tasks)`, then `advance()` per task."""

    start: Callable[[str, int], None]
    advance: Callable[[], None]


_SILENT_PROGRESS = ProgressHooks(lambda description, total: None, lambda: None)


def classify_inputs(paths: Sequence[str | Path], root: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """`(manifest files, store directories)` among `paths`, by their kind on disk (nothing is read).

    A manifest may be given as `M.jsonl=ROOT` (its files moved). Rejects files beside given
    manifests (`manifests/*.jsonl` matches them) are left out: they are read with their
    manifest. `root` re-roots a single manifest.
    """
    specs, stores = _classify(paths, root)
    return [path for path, _ in specs], stores


def _classify(paths: Sequence[str | Path], root: str | Path | None) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """`([(manifest, root or None)], stores)`: see `classify_inputs`."""
    remote_stores = [remote.location(path) for path in paths if remote.is_remote(path)]
    for store in remote_stores:
        if not remote.is_file(store / STORE_JSON):
            raise VRDataError(store, f"not a store (no {STORE_JSON})", errors.MISSING)
    parsed = [split_manifest_spec(path) for path in paths if not remote.is_remote(path)]
    if root is not None and (len(parsed) != 1 or parsed[0][0].is_dir()):
        raise VRDataError(None, "--root applies to a single manifest; give one manifest with it")
    kept = set(without_rejects_files(path for path, _ in parsed))
    manifests, stores = [], list(remote_stores)
    for path, spec_root in parsed:
        if path not in kept:
            continue
        if path.is_dir():
            if spec_root is not None:
                raise VRDataError(path, "is a store: =ROOT applies to manifests only")
            if not (path / STORE_JSON).is_file():
                raise VRDataError(path, f"neither a manifest nor a store (no {STORE_JSON})", errors.MISSING)
            stores.append(path)
        elif path.is_file():
            manifests.append((path, spec_root if spec_root is not None else (Path(root) if root is not None else None)))
        else:
            raise VRDataError(path, "no such manifest or store", errors.MISSING)
    return manifests, stores


def load_inputs(paths: Sequence[str | Path], root: str | Path | None = None) -> tuple[list[Manifest], list[Path]]:
    """Manifests (read) and store directories among `paths` (see `classify_inputs`)."""
    specs, stores = _classify(paths, root)
    return [read_manifest(path, root=spec_root) for path, spec_root in specs], stores


def describe(
    paths: Sequence[str | Path],
    *,
    root: str | Path | None = None,
    content: bool = True,
    settings: StatsSettings = StatsSettings(),
    executor: Executor | None = None,
    progress: ProgressHooks | None = None,
    save_store_stats: bool = True,
) -> dict:
    """The report of `paths` (see the module docstring). `content=False` skips everything that
    decodes audio or reads spectrograms; `save_store_stats` writes each store's `stats.json`."""
    manifests, stores = load_inputs(paths, root)
    progress = progress or _SILENT_PROGRESS
    report = {
        "kind": REPORT_KIND, "schema": REPORT_SCHEMA, "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "settings": settings.to_json(),
        "manifests": describe_manifests(manifests, settings, content, executor, progress) if manifests else None,
        "stores": [describe_store(path, settings, content, executor, progress, save_store_stats) for path in stores],
    }
    return finite_json(report)


def describe_manifests(manifests: list[Manifest], settings: StatsSettings, content: bool,
                       executor: Executor | None, progress: ProgressHooks) -> dict:
    """Totals, offsets, integrity and (with `content`) decoded content statistics of manifests."""
    unique = _unique(manifests)
    rows = [manifest_row(manifest, settings.stft) for manifest in unique]
    section = {
        "inputs": [row["input"] for row in rows],
        "libraries": rows,
        "roles": role_totals(rows),
        "durations": durations_by_role(manifest_durations(unique), settings.duration_bins),
        "offsets": pair_offsets(unique),
        "pair_checks": pair_check_report(unique),
        "integrity": {"duplicates": duplicates(file_occurrences(unique)),
                      "group_leaks": group_leaks(manifest_items(unique)),
                      "content_duplicates": content_duplicates(unique)},
        "content": None,
    }
    if content:
        for manifest in unique:
            if not manifest.root.is_dir():
                raise VRDataError(manifest.root, f"root of {manifest.source_path} does not exist here; pass --root",
                                  errors.MISSING)
        tasks = [task for manifest in unique for task in item_tasks(manifest, settings)]
        summary = ContentSummary()
        progress.start("content of manifests", len(tasks))
        for _, result in map_unordered(measure_item, tasks, executor):
            summary.add(result)
            progress.advance()
        section["content"] = summary.to_json()
    return section


def describe_store(path: Path, settings: StatsSettings, content: bool, executor: Executor | None,
                   progress: ProgressHooks, save: bool) -> dict:
    """Totals, group leaks and (with `content`) streamed spectral statistics of one store."""
    store = open_store(path)
    rows = store_rows(store)
    tracks = [ItemRef(t.role, t.library, t.id, t.split, t.group) for t in store.tracks]
    section = {
        "path": str(path),
        "stft": store.config.to_dict(),
        "codec": store.codec.to_dict(),
        "libraries": rows,
        "roles": role_totals(rows),
        "durations": durations_by_role(store_durations(store), settings.duration_bins),
        "integrity": {"group_leaks": group_leaks(tracks)},
        "content": None,
        "stats_json": None,
    }
    if content:
        store_settings = replace(settings, stft=store.config)  # spectra as the store holds them
        tasks = track_tasks(store, store_settings)
        summary = StoreContent()
        progress.start(f"spectra of {path.name}", len(tasks))
        for _, result in map_unordered(measure_track, tasks, executor):
            summary.add(result)
            progress.advance()
        section["content"] = summary.to_json()
        section = finite_json(section)
        if save:
            section["stats_json"] = str(save_store_stats(path, section, store_settings.to_json()))
    return section


def finite_json(value):
    """`value` with numpy scalars/arrays as Python values and non-finite floats as None."""
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _unique(manifests: list[Manifest]) -> list[Manifest]:
    """Manifests without repeats of the same file (given twice on the command line)."""
    seen, unique = set(), []
    for manifest in manifests:
        key = manifest.source_path.resolve() if manifest.source_path is not None else id(manifest)
        if key not in seen:
            seen.add(key)
            unique.append(manifest)
    return unique
