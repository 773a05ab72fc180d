"""Content duplicates and split leaks among manifests, from the fingerprints scan stored.

A duplicate group is a set of files joined by fingerprint matches (`search.find_matches`):
the same song twice in one library, in two libraries, as a re-encoded copy, an excerpt, or a
pair's mixture that is also another library's mixture. A group is a **leak** when its files
are in more than one split (`train` against `valid` or `test`, or `valid` against `test`): the
held-out score would then measure memory. Files of one item never match each other (a mixture
holds its own stems). Findings list leaks first.

`exclusions(findings)` says what to leave out: in a leak, every item of a split less held out
than the most held-out one present (`test` > `valid` > `train`): a test song found in train is
dropped from train, never from test. With `duplicates=True`, also all but the longest item of
each role in a group within one split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vr_data import errors
from vr_data.catalog.exclusions import Exclusion
from vr_data.catalog.manifest import Manifest
from vr_data.dsp.fingerprint import VERSION, decode, is_current
from vr_data.quality.search import MIN_SECONDS, MIN_VOTES, connected_groups, find_matches

HELD_OUT = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True)
class FileRef:
    """One fingerprinted file of one item; `seconds` its duration."""

    library: str
    role: str
    split: str
    item: str
    key: str
    path: str
    seconds: float

    def to_json(self) -> dict:
        return {"library": self.library, "role": self.role, "split": self.split, "item": self.item,
                "key": self.key, "path": self.path, "seconds": round(self.seconds, 3)}


def fingerprinted_files(manifests: Iterable[Manifest]) -> tuple[list[FileRef], list, list[int], int, int]:
    """`(files, fingerprints, owners, files without a fingerprint, files whose fingerprint is of an
    older version)` of `manifests`; a damaged fingerprint counts as none."""
    refs, prints, owners, missing, outdated = [], [], [], 0, 0
    owner_ids: dict[tuple[str, str], int] = {}
    for manifest in manifests:
        for item in manifest.items:
            owner = owner_ids.setdefault((manifest.library, item.id), len(owner_ids))
            for key, entry in sorted(item.files.items()):
                if not is_current(entry.fingerprint):
                    if entry.fingerprint is None:
                        missing += 1
                    else:
                        outdated += 1
                    continue
                try:
                    prints.append(decode(entry.fingerprint))
                except ValueError:
                    missing += 1
                    continue
                refs.append(FileRef(manifest.library, manifest.role, item.split, item.id, key, entry.path,
                                    entry.duration))
                owners.append(owner)
    return refs, prints, owners, missing, outdated


def content_duplicates(manifests: Iterable[Manifest], min_votes: int = MIN_VOTES,
                       min_seconds: int = MIN_SECONDS) -> dict:
    """The duplicate groups and leaks of `manifests` (docs/stats.md, "content duplicates")."""
    refs, prints, owners, missing, outdated = fingerprinted_files(manifests)
    matches = find_matches(prints, owners, min_votes=min_votes, min_seconds=min_seconds)
    groups = []
    for members in connected_groups(len(refs), matches):
        position = {file: index for index, file in enumerate(members)}
        files = [refs[file] for file in members]
        splits = sorted({ref.split for ref in files}, key=HELD_OUT.get)
        libraries = {(ref.role, ref.library) for ref in files}
        kinds = []
        if len(splits) > 1:
            kinds.append("across_splits")
        if len(libraries) > 1:
            kinds.append("across_libraries")
        if len(libraries) < len(files):
            kinds.append("within_library")
        edges = [{"a": position[m.a], "b": position[m.b], "votes": m.votes, "offset_seconds": m.offset_seconds,
                  "matched_seconds": m.matched_seconds, "agreeing_seconds": m.agreeing_seconds}
                 for m in matches if m.a in position]
        groups.append({"leak": len(splits) > 1, "splits": splits, "kinds": kinds,
                       "files": [ref.to_json() for ref in files], "matches": edges})
    groups.sort(key=lambda g: (not g["leak"], g["files"][0]["library"], g["files"][0]["path"]))
    return {"files": len(refs), "files_without_fingerprint": missing, "files_with_outdated_fingerprint": outdated,
            "fingerprint_version": VERSION, "min_votes": min_votes, "min_seconds": min_seconds,
            "leaks": sum(group["leak"] for group in groups), "groups": groups}


def exclusions(findings: dict, duplicates: bool = False) -> list[Exclusion]:
    """Items to leave out (module docstring); one per item, a leak before a duplicate."""
    chosen: dict[tuple[str, str], Exclusion] = {}
    for group in findings["groups"]:
        files = group["files"]
        items = {}
        for ref in files:
            items.setdefault((ref["library"], ref["item"]), []).append(ref)
        if group["leak"]:
            kept_split = max(group["splits"], key=HELD_OUT.get)
            keeper = next(ref for ref in files if ref["split"] == kept_split)
            for (library, item), item_files in items.items():
                if HELD_OUT[item_files[0]["split"]] < HELD_OUT[kept_split]:
                    reason = (f"same audio as {keeper['library']}/{keeper['path']} ({kept_split}): "
                              f"{_match_text(group, files, item_files, keeper)}")
                    chosen[(library, item)] = Exclusion(library, item, errors.LEAK, reason,
                                                        tuple(ref["path"] for ref in item_files))
        elif duplicates:
            by_role: dict[str, list] = {}
            for key, item_files in items.items():
                by_role.setdefault(item_files[0]["role"], []).append((key, item_files))
            for role_items in by_role.values():
                role_items.sort(key=lambda entry: (-max(ref["seconds"] for ref in entry[1]), entry[0]))
                keeper = role_items[0][1][0]
                for (library, item), item_files in role_items[1:]:
                    if (library, item) not in chosen:
                        reason = (f"same audio as {keeper['library']}/{keeper['path']}: "
                                  f"{_match_text(group, files, item_files, keeper)}")
                        chosen[(library, item)] = Exclusion(library, item, errors.DUPLICATE, reason,
                                                            tuple(ref["path"] for ref in item_files))
    return sorted(chosen.values(), key=lambda e: (e.library, e.id))


def _match_text(group: dict, files: list[dict], item_files: list[dict], keeper: dict) -> str:
    """`matched 31.2 s at offset 1.25 s` for the strongest match between the item and the keeper
    (or any match of the item, when they are joined only through other files)."""
    mine = {index for index, ref in enumerate(files) if ref in item_files}
    keeper_index = files.index(keeper)
    edges = [e for e in group["matches"] if {e["a"], e["b"]} & mine]
    direct = [e for e in edges if keeper_index in (e["a"], e["b"])]
    edge = max(direct or edges, key=lambda e: e["votes"])
    return f"matched {edge['matched_seconds']:g} s at offset {edge['offset_seconds']:g} s"
