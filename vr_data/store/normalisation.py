"""Input normalisation saved beside a store: `STORE/stats.json`, read by the trainer and mixer.

`stats.json` holds the store's statistics section of the `vrdata stats` report and, under
`log_magnitude`, per `role/source` the per-bin mean and std (population) of `ln(|X| + log_eps)`
over every frame and both channels, as lists of `bins` floats. It names the sha256 of the
`store.json` it describes, so statistics of an earlier build (or before an append) are refused
as stale. It is written to a temporary name and renamed; `store.json` (with its completeness
flag) is never touched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vr_data import __version__
from vr_data.errors import VRDataError
from vr_data.store import remote
from vr_data.store.format import ROLE_SOURCES, STORE_JSON

STATS_JSON = "stats.json"
STATS_KIND = "vr-store-stats"
STATS_SCHEMA = 1
# Smallest std returned: a bin that never varies (all-zero DC of a silent role, say) would
# otherwise divide by zero when a model standardises its input. In natural-log units.
STD_FLOOR = 1e-3


def save_store_stats(store_path: str | Path, section: dict, settings: dict) -> Path:
    """Write `stats.json` into the store: `section` is the store's part of the report (it must
    have `content.log_magnitude`), `settings` the report's settings (log_eps, STFT...)."""
    store_path = remote.location(store_path)
    content = section.get("content") or {}
    if not content.get("log_magnitude"):
        raise VRDataError(store_path, "no content statistics to save (computed with --no-content?)")
    record = {
        "kind": STATS_KIND, "schema": STATS_SCHEMA, "package_version": __version__,
        "store_json_sha256": _sha256(store_path / STORE_JSON),
        "log_eps": settings["log_eps"], "log_magnitude": content["log_magnitude"],
        "settings": settings, "report": {key: value for key, value in section.items() if key != "content"}
        | {"content": {key: value for key, value in content.items() if key != "log_magnitude"}},
    }
    path = store_path / STATS_JSON
    remote.write_json(path, record)
    return path


def load_normalisation(store_path: str | Path, role: str, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin `(mean, std)` float32 `(bins,)` of `ln(|X| + log_eps)` for `role`'s `source`.

    `source` None is the role's first stored source: the mixture for pairs (the model's input).
    std is floored at `STD_FLOOR`. Raises VRDataError when `stats.json` is missing, stale (the
    store changed since) or lacks the role.
    """
    store_path = remote.location(store_path)
    record = read_store_stats(store_path)
    if role not in ROLE_SOURCES:
        raise VRDataError(store_path, f"unknown role {role!r} (one of {', '.join(ROLE_SOURCES)})")
    key = f"{role}/{source or ROLE_SOURCES[role][0]}"
    if key not in record["log_magnitude"]:
        have = ", ".join(sorted(record["log_magnitude"])) or "none"
        raise VRDataError(store_path / STATS_JSON, f"no statistics for {key} (has {have})")
    entry = record["log_magnitude"][key]
    mean = np.asarray(entry["mean"], dtype=np.float32)
    std = np.maximum(np.asarray(entry["std"], dtype=np.float32), np.float32(STD_FLOOR))
    return mean, std


def log_eps(store_path: str | Path) -> float:
    """The `eps` of `ln(|X| + eps)` the normalisation was computed with."""
    return float(read_store_stats(remote.location(store_path))["log_eps"])


def read_store_stats(store_path: Path) -> dict:
    """`stats.json` of a store, checked to describe the store as it is now."""
    store_path = remote.location(store_path)
    path = store_path / STATS_JSON
    try:
        record = json.loads(remote.read_text(path))
    except FileNotFoundError:
        raise VRDataError(path, f"no statistics yet; run `vrdata stats {store_path}`") from None
    except json.JSONDecodeError as error:
        raise VRDataError(path, f"not valid JSON ({error.msg})") from None
    if record.get("kind") != STATS_KIND:
        raise VRDataError(path, f"not a store statistics file (kind is {record.get('kind')!r})")
    store_json = store_path / STORE_JSON
    if not remote.is_file(store_json):
        raise VRDataError(store_path, f"not a store ({STORE_JSON} missing)")
    if record.get("store_json_sha256") != _sha256(store_json):
        raise VRDataError(path, f"stale: the store changed since it was written; rerun `vrdata stats {store_path}`")
    return record


def _sha256(path: Path | remote.ObjectPath) -> str:
    """sha256 of a (small) file or object: `store.json`."""
    return hashlib.sha256(remote.read_bytes(path)).hexdigest()
