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

Splits: `train`, `valid` (selects models) and `test` (the reported numbers; MUSDB's test songs).
Reading validates every field's type and range, so a damaged or foreign file is one
`VRDataError` naming the file and line, never a traceback deep inside a build.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from vr_data import __version__, errors
from vr_data.errors import Reject, VRDataError
from vr_data.io import atomic_write_text, not_regular_reason, os_reason

SCHEMA_VERSION = 1
ROLES = ("pair", "vocal", "instrumental", "pretrain")
SPLITS = ("train", "valid", "test")
REJECTS_SUFFIX = ".rejects.jsonl"
_HEADER_LIMIT = 1 << 20  # bytes: a header line is small; an audio file given by mistake is not read whole
_ID_UNSAFE = re.compile(r"[^a-z0-9]+")
_OPTIONAL_FILE_FIELDS = ("fingerprint",)


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
    # Content fingerprint (vr_data.dsp.fingerprint.encode), or None when not computed (older
    # manifests, `scan --no-fingerprint`). Optional: absent from the JSON when None.
    fingerprint: str | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    def to_json(self) -> dict:
        record = asdict(self)
        if record["fingerprint"] is None:
            del record["fingerprint"]
        record["duration"] = round(self.duration, 6)
        return record

    @classmethod
    def from_json(cls, record: dict) -> "FileEntry":
        """A file entry from its JSON; ValueError says which field is wrong."""
        if not isinstance(record, dict):
            raise ValueError("a file entry must be an object")
        values = {name: _field(record, name) for name in cls.__dataclass_fields__ if name not in _OPTIONAL_FILE_FIELDS}
        fingerprint = record.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ValueError(f"file {values['path']!r}: 'fingerprint' must be a string or absent")
        values["fingerprint"] = fingerprint
        for name in ("path", "sha256", "format"):
            if not isinstance(values[name], str) or not values[name] and name == "path":
                raise ValueError(f"file field {name!r} must be a {'non-empty ' if name == 'path' else ''}string, "
                                 f"not {values[name]!r}")
        for name, lowest in (("size", 0), ("mtime_ns", None), ("sample_rate", 1), ("channels", 1), ("samples", 0)):
            value = values[name]
            if not _is_int(value) or lowest is not None and value < lowest:
                wanted = "an integer" if lowest is None else f"an integer >= {lowest}"
                raise ValueError(f"file {values['path']!r}: {name!r} must be {wanted}, not {value!r}")
        return cls(**values)


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
        """An item from its JSON; ValueError says which field is wrong."""
        if not isinstance(record, dict):
            raise ValueError("an item must be a JSON object")
        identifier, role = _field(record, "id"), _field(record, "role")
        if not isinstance(identifier, str) or not identifier or identifier != identifier.strip():
            raise ValueError(f"'id' must be a non-empty string without surrounding whitespace, not {identifier!r}")
        if role not in ROLES:
            raise ValueError(f"item {identifier}: role {role!r} is not one of {', '.join(ROLES)}")
        split = record.get("split", "train")
        if split not in SPLITS:
            raise ValueError(f"item {identifier}: split {split!r} is not one of {', '.join(SPLITS)}")
        files, sources = _field(record, "files"), _field(record, "sources")
        if not isinstance(files, dict) or not files:
            raise ValueError(f"item {identifier}: 'files' must be a non-empty object")
        if not isinstance(sources, dict) or not sources:
            raise ValueError(f"item {identifier}: 'sources' must be a non-empty object")
        for name, keys in sources.items():
            if not isinstance(keys, list) or not keys or not all(isinstance(key, str) for key in keys):
                raise ValueError(f"item {identifier}: source {name!r} must be a non-empty list of file keys")
            unknown = [key for key in keys if key not in files]
            if unknown:
                raise ValueError(f"item {identifier}: source {name!r} names unknown file keys {unknown}")
        group, tags, checks = record.get("group"), record.get("tags", []), record.get("checks", {})
        if group is not None and not isinstance(group, str):
            raise ValueError(f"item {identifier}: 'group' must be a string or absent, not {group!r}")
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise ValueError(f"item {identifier}: 'tags' must be a list of strings")
        if not isinstance(checks, dict):
            raise ValueError(f"item {identifier}: 'checks' must be an object")
        return cls(
            id=identifier,
            role=role,
            files={key: FileEntry.from_json(entry) for key, entry in files.items()},
            sources={key: list(value) for key, value in sources.items()},
            split=split,
            group=group,
            tags=list(tags),
            checks=dict(checks),
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
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Read a manifest; `root` overrides the header's root (the files moved machine or disk).

    Everything is validated (see the module docstring): a file that is not a manifest, or a
    manifest with a wrong field, raises one VRDataError naming the file (and the line).
    """
    path = Path(path)
    reason = not_regular_reason(path)
    if reason is not None:
        code = errors.MISSING if reason in ("file not found", "broken symbolic link") else errors.UNREADABLE
        raise VRDataError(path, f"cannot read manifest ({reason})", code)
    if path.name.endswith(REJECTS_SUFFIX):
        with _opened(path) as handle:
            first = handle.readline(_HEADER_LIMIT)
        if b'"vr-manifest"' not in first:
            raise VRDataError(path, "is the rejects file scan writes beside a manifest, not a manifest")
    with _opened(path) as handle:
        header = _parse_header(path, handle.readline(_HEADER_LIMIT))
        rest = handle.read()
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError as error:
        raise VRDataError(path, f"not UTF-8 text after the header (byte {error.start})") from None
    if header["role"] not in ROLES:
        raise VRDataError(path, f"header role {header['role']!r} is not one of {', '.join(ROLES)}")
    items, seen = [], set()
    for number, line in enumerate(text.splitlines(), start=2):
        if not line.strip():
            continue
        try:
            item = Item.from_json(json.loads(line))
        except json.JSONDecodeError as error:
            raise VRDataError(path, f"line {number} is not JSON ({error.msg})") from None
        except (ValueError, KeyError, TypeError) as error:
            raise VRDataError(path, f"line {number} is not a valid item ({error})") from None
        if item.role != header["role"]:
            raise VRDataError(path, f"line {number}: item {item.id} has role {item.role!r}, the header says "
                                    f"{header['role']!r}")
        if item.id in seen:
            raise VRDataError(path, f"line {number}: item id {item.id!r} appears twice")
        seen.add(item.id)
        items.append(item)
    if root is None and not isinstance(header.get("root"), str):
        raise VRDataError(path, "header has no 'root' (pass the root: --root or M.jsonl=ROOT)")
    chosen_root = Path(root) if root is not None else Path(header["root"])
    library = header.get("library", path.stem)
    options = header.get("options", {})
    return Manifest(
        library=library if isinstance(library, str) and library else path.stem,
        role=header["role"],
        root=chosen_root,
        items=items,
        layout=str(header.get("layout", "")),
        options=options if isinstance(options, dict) else {},
        created=str(header.get("created", "")),
        source_path=path,
    )


def _opened(path: Path):
    try:
        return open(path, "rb")
    except OSError as error:
        raise VRDataError(path, f"cannot read manifest ({os_reason(error)})", errors.MISSING) from None


def _parse_header(path: Path, line: bytes) -> dict:
    """The header line as a dict, or a VRDataError saying why the file is not a manifest."""
    if not line.strip():
        raise VRDataError(path, "empty manifest (no header line)")
    try:
        header = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise VRDataError(path, "not a vr-manifest (not UTF-8 text: an audio or binary file?)") from None
    except json.JSONDecodeError as error:
        raise VRDataError(path, f"not a vr-manifest (the first line is not JSON: {error.msg})") from None
    if not isinstance(header, dict) or header.get("kind") != "vr-manifest":
        raise VRDataError(path, "not a vr-manifest (first line lacks kind=vr-manifest)")
    schema = header.get("schema", 0)
    if not _is_int(schema):
        raise VRDataError(path, f"header schema must be an integer, not {schema!r}")
    if schema > SCHEMA_VERSION:
        raise VRDataError(path, f"manifest schema {schema} is newer than this package's {SCHEMA_VERSION}")
    if "role" not in header:
        raise VRDataError(path, "header has no 'role'")
    return header


def split_manifest_spec(spec: str | Path) -> tuple[Path, Path | None]:
    """`M.jsonl` -> `(M.jsonl, None)`; `M.jsonl=ROOT` -> `(M.jsonl, ROOT)` (the files moved).

    A path that exists as given is never split, so a manifest whose name contains "=" works.
    """
    text = str(spec)
    if "=" not in text or Path(text).exists():
        return Path(text), None
    path, _, root = text.partition("=")
    if not path or not root:
        raise VRDataError(text, "expected M.jsonl or M.jsonl=ROOT")
    return Path(path), Path(root)


def without_rejects_files(paths: Iterable[str | Path]) -> list[Path]:
    """`paths` less the `M.rejects.jsonl` files of manifests `M.jsonl` also in `paths`:
    `manifests/*.jsonl` matches the rejects files scan writes beside each manifest."""
    given = [Path(path) for path in paths]
    return [path for path in given if not any(rejects_path(other) == path for other in given if other != path)]


def rejects_path(manifest_path: str | Path) -> Path:
    """`M.jsonl` -> `M.rejects.jsonl`, beside the manifest."""
    manifest_path = Path(manifest_path)
    stem = manifest_path.name[: -len(".jsonl")] if manifest_path.name.endswith(".jsonl") else manifest_path.name
    return manifest_path.with_name(stem + REJECTS_SUFFIX)


def write_rejects(path: str | Path, rejects: Iterable[Reject]) -> Path:
    lines = [json.dumps(r.to_json(), sort_keys=True) for r in sorted(rejects, key=lambda r: (r.path, r.code))]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
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


def _field(record: dict, name: str):
    if name not in record:
        raise ValueError(f"missing field {name!r}")
    return record[name]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
