"""Portable dataset manifests: JSONL, one header line then one line per item.

A manifest describes one library of one role (`pair`, `vocal`, `instrumental`, `pretrain`).
Paths are POSIX paths relative to the library root, so the same manifest works on another
machine with the files under another root (`read_manifest(path, root=...)`). Each file carries
its sha256, size and mtime (for incremental rescans), and its audio header; each item carries a
stable id, a split and an optional group key. The schema is documented in docs/manifest.md;
new information is a new field, never a change of an old one.

Shapes of an item's sources: `sources` maps a source name (`mixture`, `instrumental`, `vocal`,
`audio`) to the list of file keys whose audio is summed to make it (MUSDB's instrumental is
drums + bass + other).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from vr_data import __version__, errors
from vr_data.errors import Reject, VRDataError

SCHEMA_VERSION = 1
ROLES = ("pair", "vocal", "instrumental", "pretrain")
SPLITS = ("train", "valid")
_ID_UNSAFE = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class FileEntry:
    """One audio file: `path` relative to the root; rate in Hz; `samples` per channel."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    sample_rate: int
    channels: int
    samples: int
    format: str

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    def to_json(self) -> dict:
        record = asdict(self)
        record["duration"] = round(self.duration, 6)
        return record

    @classmethod
    def from_json(cls, record: dict) -> "FileEntry":
        return cls(**{k: record[k] for k in cls.__dataclass_fields__})


@dataclass
class Item:
    """One training item: a pair, a vocal, an instrumental or a pretraining track."""

    id: str
    role: str
    files: dict[str, FileEntry]
    sources: dict[str, list[str]]
    split: str = "train"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)  # pair checks: offset_samples, length_diff_seconds...

    @property
    def duration(self) -> float:
        """Seconds: the shortest source (pairs are cropped to their common length)."""
        return min(self.files[keys[0]].duration for keys in self.sources.values())

    def to_json(self) -> dict:
        record = {
            "id": self.id,
            "role": self.role,
            "split": self.split,
            "duration": round(self.duration, 6),
            "files": {key: entry.to_json() for key, entry in self.files.items()},
            "sources": self.sources,
        }
        if self.group is not None:
            record["group"] = self.group
        if self.tags:
            record["tags"] = list(self.tags)
        if self.checks:
            record["checks"] = self.checks
        return record

    @classmethod
    def from_json(cls, record: dict) -> "Item":
        return cls(
            id=record["id"],
            role=record["role"],
            files={key: FileEntry.from_json(entry) for key, entry in record["files"].items()},
            sources={key: list(value) for key, value in record["sources"].items()},
            split=record.get("split", "train"),
            group=record.get("group"),
            tags=list(record.get("tags", [])),
            checks=dict(record.get("checks", {})),
        )


@dataclass
class Manifest:
    """A header and items; `root` is where the files are on this machine."""

    library: str
    role: str
    root: Path
    items: list[Item]
    layout: str = ""
    options: dict = field(default_factory=dict)
    created: str = ""
    source_path: Path | None = None  # the file this was read from, if any

    def resolve(self, relative: str) -> Path:
        """Absolute path of a manifest path; refuses paths that escape the root."""
        return resolve_under(self.root, relative)

    def source_paths(self, item: Item, source: str) -> list[Path]:
        return [self.resolve(item.files[key].path) for key in item.sources[source]]

    def header(self) -> dict:
        return {
            "kind": "vr-manifest",
            "schema": SCHEMA_VERSION,
            "library": self.library,
            "role": self.role,
            "root": str(self.root),
            "layout": self.layout,
            "created": self.created or _now(),
            "package_version": __version__,
            "options": self.options,
            "items": len(self.items),
        }

    @property
    def hours(self) -> float:
        return sum(item.duration for item in self.items) / 3600.0


def resolve_under(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths, `..` and symlinks that lead outside `root`."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", relative) or ".." in pure.parts:
        raise VRDataError(relative, f"path escapes the dataset root {root}", errors.ESCAPES_ROOT)
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / Path(*pure.parts)).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise VRDataError(relative, f"path escapes the dataset root {root} (symlink)", errors.ESCAPES_ROOT)
    return candidate


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write header + items (sorted by id) atomically: a temporary file renamed into place."""
    path = Path(path)
    lines = [json.dumps(manifest.header(), sort_keys=True)]
    lines += [json.dumps(item.to_json(), sort_keys=True) for item in sorted(manifest.items, key=lambda i: i.id)]
    _atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Read a manifest; `root` overrides the header's root (the files moved machine or disk)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VRDataError(path, f"cannot read manifest ({error.strerror})", errors.MISSING) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise VRDataError(path, "empty manifest (no header line)")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as error:
        raise VRDataError(path, f"header is not JSON ({error.msg})") from None
    if header.get("kind") != "vr-manifest":
        raise VRDataError(path, "not a vr-manifest (first line lacks kind=vr-manifest)")
    if int(header.get("schema", 0)) > SCHEMA_VERSION:
        raise VRDataError(path, f"manifest schema {header['schema']} is newer than this package's {SCHEMA_VERSION}")
    items = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            items.append(Item.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise VRDataError(path, f"line {number} is not a valid item ({error})") from None
    chosen_root = Path(root) if root is not None else Path(header["root"])
    return Manifest(
        library=header.get("library", path.stem),
        role=header["role"],
        root=chosen_root,
        items=items,
        layout=header.get("layout", ""),
        options=header.get("options", {}),
        created=header.get("created", ""),
        source_path=path,
    )


def rejects_path(manifest_path: str | Path) -> Path:
    """`M.jsonl` -> `M.rejects.jsonl`, beside the manifest."""
    manifest_path = Path(manifest_path)
    stem = manifest_path.name[: -len(".jsonl")] if manifest_path.name.endswith(".jsonl") else manifest_path.name
    return manifest_path.with_name(stem + ".rejects.jsonl")


def write_rejects(path: str | Path, rejects: Iterable[Reject]) -> Path:
    lines = [json.dumps(r.to_json(), sort_keys=True) for r in sorted(rejects, key=lambda r: (r.path, r.code))]
    _atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return Path(path)


def read_rejects(path: str | Path) -> list[Reject]:
    path = Path(path)
    if not path.exists():
        return []
    return [Reject(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def item_id(relative: str) -> str:
    """A stable id from a relative path: readable slug + 8 hex of its hash; no dots (WebDataset keys)."""
    stem = str(PurePosixPath(relative).with_suffix(""))
    slug = _ID_UNSAFE.sub("-", stem.lower()).strip("-")[:60] or "item"
    return f"{slug}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def split_for(key: str, valid_fraction: float, seed: str = "vr-split-v1") -> str:
    """Deterministic split from a hash of the group key (or id): adding items never moves others."""
    if valid_fraction <= 0:
        return "train"
    value = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "valid" if value < valid_fraction else "train"


def manifest_digest(path: str | Path) -> str:
    """sha256 of a manifest file's bytes (stores record which manifests built them)."""
    return file_sha256(path)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
