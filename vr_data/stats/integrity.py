"""Integrity findings: exact duplicate files and groups leaking across the train/valid/test splits.

Duplicates are files with the same sha256 named more than once by the given manifests: twice in
one library, in two libraries or roles (a pair's instrumental also in the instrumental library,
the same vocal twice), or, worst, on both sides of the split. Group leakage is one group key
(an artist, an album folder...) with items in more than one split (`train`, `valid`, `test`) among the manifests (or
store tracks) of one role: validation would then measure memorisation of that group.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from vr_data.catalog.manifest import Manifest


@dataclass(frozen=True)
class FileOccurrence:
    """One file of one item of one manifest; `path` relative to `root`."""

    sha256: str
    library: str
    role: str
    split: str
    item: str
    key: str
    path: str
    root: str
    input: str

    def to_json(self) -> dict:
        return {"library": self.library, "role": self.role, "split": self.split, "item": self.item,
                "key": self.key, "path": self.path, "root": self.root, "input": self.input}


@dataclass(frozen=True)
class ItemRef:
    """An item (or store track) as group leakage sees it."""

    role: str
    library: str
    id: str
    split: str
    group: str | None
    paths: tuple[str, ...] = ()


def file_occurrences(manifests: Iterable[Manifest]) -> list[FileOccurrence]:
    """Every file of every item; a manifest given twice counts once."""
    seen: set[tuple] = set()
    occurrences = []
    for manifest in manifests:
        source = str(manifest.source_path.resolve()) if manifest.source_path is not None else manifest.library
        for item in manifest.items:
            for key, entry in item.files.items():
                identity = (source, item.id, key)
                if identity in seen:
                    continue
                seen.add(identity)
                occurrences.append(FileOccurrence(entry.sha256, manifest.library, manifest.role, item.split, item.id,
                                                  key, entry.path, str(manifest.root), source))
    return occurrences


def duplicates(occurrences: Iterable[FileOccurrence]) -> list[dict]:
    """Groups of occurrences sharing a sha256, with what they span.

    `kinds` holds `within_library` (two in one library), `across_libraries`, `across_roles`
    and `across_splits` (the same audio in two splits), as they apply.
    """
    by_hash: dict[str, list[FileOccurrence]] = defaultdict(list)
    for occurrence in occurrences:
        by_hash[occurrence.sha256].append(occurrence)
    findings = []
    for sha256, group in by_hash.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda o: (o.role, o.library, o.path, o.key))
        kinds = set()
        libraries = Counter((o.role, o.library) for o in group)
        if any(count > 1 for count in libraries.values()):
            kinds.add("within_library")
        if len(libraries) > 1:
            kinds.add("across_libraries")
        if len({o.role for o in group}) > 1:
            kinds.add("across_roles")
        if len({o.split for o in group}) > 1:
            kinds.add("across_splits")
        findings.append({"sha256": sha256, "kinds": sorted(kinds), "count": len(group),
                         "occurrences": [o.to_json() for o in group]})
    findings.sort(key=lambda f: ("across_splits" not in f["kinds"], f["occurrences"][0]["path"], f["sha256"]))
    return findings


def manifest_items(manifests: Iterable[Manifest]) -> list[ItemRef]:
    return [ItemRef(manifest.role, manifest.library, item.id, item.split, item.group,
                    tuple(entry.path for entry in item.files.values()))
            for manifest in manifests for item in manifest.items]


def group_leaks(items: Iterable[ItemRef]) -> list[dict]:
    """Group keys of one role with items in more than one split, listing those items."""
    groups: dict[tuple[str, str], list[ItemRef]] = defaultdict(list)
    for item in items:
        if item.group is not None:
            groups[(item.role, item.group)].append(item)
    findings = []
    for (role, group), members in sorted(groups.items()):
        splits = sorted({member.split for member in members})
        if len(splits) < 2:
            continue
        findings.append({
            "role": role, "group": group, "libraries": sorted({m.library for m in members}),
            "splits": {split: [{"library": m.library, "id": m.id, "paths": list(m.paths)}
                               for m in sorted(members, key=lambda m: (m.library, m.id)) if m.split == split]
                       for split in splits},
        })
    return findings

