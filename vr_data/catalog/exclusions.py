"""Exclusion lists: items never to train on (content duplicates, split leaks), by library and id.

`vrdata check --write-exclusions FILE` writes one (vr_data.quality.duplicates); `vrdata
build-shards --exclude FILE` leaves its items out and `vrdata scan --exclude FILE` rejects them
(reject code `leak` or `duplicate`). Format, JSONL (docs/manifest.md): a header line
`{"kind": "vr-exclusions", "schema": 1}`, then one line per item:
`{"library": ..., "id": ..., "code": "leak" | "duplicate", "reason": ..., "paths": [...]}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from vr_data import errors
from vr_data.catalog.manifest import Manifest
from vr_data.errors import VRDataError
from vr_data.io import atomic_write_text, not_regular_reason

EXCLUSIONS_KIND = "vr-exclusions"
CODES = (errors.LEAK, errors.DUPLICATE)


@dataclass(frozen=True)
class Exclusion:
    """One item to leave out: `code` is `leak` or `duplicate`, `reason` says what it matches."""

    library: str
    id: str
    code: str
    reason: str
    paths: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"library": self.library, "id": self.id, "code": self.code, "reason": self.reason,
                "paths": list(self.paths)}


def write_exclusions(path: str | Path, exclusions: list[Exclusion]) -> Path:
    lines = [json.dumps({"kind": EXCLUSIONS_KIND, "schema": 1})]
    lines += [json.dumps(e.to_json(), sort_keys=True) for e in sorted(exclusions, key=lambda e: (e.library, e.id))]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return Path(path)


def read_exclusions(path: str | Path) -> dict[tuple[str, str], Exclusion]:
    """The exclusions of `path` by `(library, id)`; VRDataError naming the file and line if damaged."""
    path = Path(path)
    reason = not_regular_reason(path)
    if reason is not None:
        raise VRDataError(path, f"cannot read the exclusion list ({reason})", errors.MISSING)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("kind") != EXCLUSIONS_KIND:
        raise VRDataError(path, f"not an exclusion list (first line lacks kind={EXCLUSIONS_KIND}; "
                                "write one with vrdata check --write-exclusions)")
    found = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            exclusion = Exclusion(str(record["library"]), str(record["id"]), str(record["code"]),
                                  str(record.get("reason", "")), tuple(record.get("paths", [])))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise VRDataError(path, f"line {number} is not an exclusion ({error})") from None
        if exclusion.code not in CODES:
            raise VRDataError(path, f"line {number}: code {exclusion.code!r} is not one of {', '.join(CODES)}")
        found[(exclusion.library, exclusion.id)] = exclusion
    return found


def apply_exclusions(manifests: list[Manifest], exclusions: dict[tuple[str, str], Exclusion]
                     ) -> tuple[list[Manifest], list[Exclusion]]:
    """`manifests` without the excluded items, and the exclusions that applied."""
    kept, applied = [], []
    for manifest in manifests:
        items = []
        for item in manifest.items:
            exclusion = exclusions.get((manifest.library, item.id))
            if exclusion is None:
                items.append(item)
            else:
                applied.append(exclusion)
        kept.append(replace(manifest, items=items))
    return kept, applied
