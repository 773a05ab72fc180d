"""Folder layouts people have, turned into scan candidates (which files make one item).

- `pairs`: vocal-remover style `mixtures/` + `instruments/`, matched by name (never by sort order).
- `musdb`: MUSDB18-HQ `train|test/<track>/{mixture,vocals,drums,bass,other}.wav`.
- `vocals`, `instrumentals`, `pretrain`: a folder (recursive) of single tracks.

Discovery only looks at names and file kinds; decoding and hashing happen in
`vr_data.catalog.scan`. Every layout refuses, with a reject line, what it cannot safely open:
a file or folder symlinked outside the root (`escapes_root`) and anything that is not a regular
file (`unreadable`: a FIFO named `pipe.wav` would block the decoder forever).
"""

from __future__ import annotations

import functools
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vr_data import errors
from vr_data.audio import AUDIO_EXTENSIONS
from vr_data.errors import Reject, VRDataError
from vr_data.io import not_regular_reason

LAYOUTS = ("pairs", "musdb", "vocals", "instrumentals", "pretrain")
LAYOUT_ROLE = {"pairs": "pair", "musdb": "pair", "vocals": "vocal", "instrumentals": "instrumental", "pretrain": "pretrain"}
MIXTURE_DIRS = ("mixtures", "mixture", "mixes")
INSTRUMENTAL_DIRS = ("instruments", "instrumentals", "instrumental")
MUSDB_STEMS = ("mixture", "vocals", "drums", "bass", "other")

# Usual suffixes that tell a mixture from its instrumental: "_mix", "-inst", " (Instrumental)",
# "[Karaoke]", "_off vocal"... stripped (repeatedly) before matching.
_PAIR_SUFFIX = re.compile(
    r"[\s_\-.]*[\(\[]?\s*(mix|mixture|full[\s_-]?mix|original|inst|instr|instru|instrum|instrumental|"
    r"karaoke|off[\s_-]?vocals?|backing[\s_-]?track|no[\s_-]?vocals?)\s*[\)\]]?$",
    re.IGNORECASE,
)


@dataclass
class Candidate:
    """Files (key -> path relative to root) that make one item, before any decoding."""

    name: str  # relative path the id is derived from
    role: str
    files: dict[str, str]
    sources: dict[str, list[str]]
    split: str | None = None  # a split the layout itself dictates (MUSDB train/test)
    tags: list[str] = field(default_factory=list)
    group_source: str = ""  # the path `--group-by` reads (inside mixtures/ for pairs)
    id_source: str = ""  # the path the stable id derives from (default: name)


def pair_key(stem: str, pattern: re.Pattern | None = None) -> str | None:
    """The matching key of a pair member's file stem; None when `pattern` does not match."""
    if pattern is not None:
        match = pattern.search(stem)
        if match is None:
            return None
        return match.group("key") if "key" in pattern.groupindex else match.group(1 if pattern.groups else 0)
    key = stem
    while True:
        stripped = _PAIR_SUFFIX.sub("", key)
        if stripped == key or not stripped:
            break
        key = stripped
    return re.sub(r"[\s_\-]+", " ", key).strip().lower()


def discover(root: Path, layout: str, pair_pattern: str | None = None) -> tuple[list[Candidate], list[Reject]]:
    """Candidates and name-level rejects (unmatched, ambiguous, escaping symlinks) under `root`."""
    root = Path(root)
    if layout == "pairs":
        return _discover_pairs(root, compile_pair_pattern(pair_pattern) if pair_pattern else None)
    if layout == "musdb":
        return _discover_musdb(root)
    if layout in ("vocals", "instrumentals", "pretrain"):
        files, rejects = list_audio(root, root, LAYOUT_ROLE[layout])
        role = LAYOUT_ROLE[layout]
        return [Candidate(name=rel, role=role, files={"audio": rel}, sources={_single_source(role): ["audio"]},
                          group_source=rel) for rel in files], rejects
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def _single_source(role: str) -> str:
    return {"vocal": "vocal", "instrumental": "instrumental", "pretrain": "audio"}[role]


def compile_pair_pattern(pattern: str) -> re.Pattern:
    """`--pair-pattern`: a valid regex with a `(?P<key>...)` group, else a ConfigError."""
    from vr_data.errors import ConfigError

    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ConfigError(None, f"--pair-pattern {pattern!r} is not a valid regular expression ({error})") from None
    if "key" not in compiled.groupindex:
        raise ConfigError(None, f"--pair-pattern {pattern!r} needs a (?P<key>...) group: the part both names share")
    return compiled


def list_audio(root: Path, folder: Path, role: str | None = None) -> tuple[list[str], list[Reject]]:
    """Audio files under `folder` as sorted POSIX paths relative to `root`.

    Symlinks (to files or folders) that lead outside `root` are refused, never followed; so is
    anything that is not a regular file. Symlinked folders inside `root` are not descended:
    their files are found under their real path.
    """
    found: list[str] = []
    rejects: list[Reject] = []
    root_resolved = root.resolve()
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        kept = []
        for name in sorted(d for d in subdirs if not d.startswith(".")):
            path = Path(directory) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root_resolved):
                rejects.append(Reject(path.relative_to(root).as_posix(), errors.ESCAPES_ROOT,
                                      "symlinked folder leads outside the dataset root; not scanned", role))
                continue
            kept.append(name)
        subdirs[:] = kept
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            path = Path(directory) / name
            rel = path.relative_to(root).as_posix()
            reject = file_reject(path, rel, root_resolved, role)
            if reject is not None:
                rejects.append(reject)
                continue
            found.append(rel)
    return found, rejects


def file_reject(path: Path, rel: str, root_resolved: Path, role: str | None) -> Reject | None:
    """The reject of a listed file that escapes the root or is not a regular file, else None."""
    if not path.resolve().is_relative_to(root_resolved):
        return Reject(rel, errors.ESCAPES_ROOT, "symlink leads outside the dataset root", role)
    reason = not_regular_reason(path)
    if reason is not None:
        code = errors.MISSING if reason in ("file not found", "broken symbolic link") else errors.UNREADABLE
        return Reject(rel, code, reason, role)
    return None


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / name.capitalize()):
            if candidate.is_dir():
                return candidate
    return None


def _discover_pairs(root: Path, pattern: re.Pattern | None) -> tuple[list[Candidate], list[Reject]]:
    mixture_dir = _find_dir(root, MIXTURE_DIRS)
    instrumental_dir = _find_dir(root, INSTRUMENTAL_DIRS)
    if mixture_dir is None or instrumental_dir is None:
        raise VRDataError(root, f"pairs layout needs {MIXTURE_DIRS[0]}/ and {INSTRUMENTAL_DIRS[0]}/ folders", "layout")
    rejects: list[Reject] = []
    sides: dict[str, dict[str, list[str]]] = {}
    for side, folder in (("mixture", mixture_dir), ("instrumental", instrumental_dir)):
        files, side_rejects = list_audio(root, folder, "pair")
        rejects += side_rejects
        keyed: dict[str, list[str]] = defaultdict(list)
        for rel in files:
            inner = PurePosixPath(rel).relative_to(folder.relative_to(root).as_posix())
            key = pair_key(inner.stem, pattern)
            if key is None:
                rejects.append(Reject(rel, errors.UNMATCHED, f"name does not match the pair pattern {pattern.pattern!r}", "pair"))
                continue
            keyed[(inner.parent / key).as_posix()].append(rel)
        sides[side] = keyed
    candidates = []
    mixtures, instrumentals = sides["mixture"], sides["instrumental"]
    for key in sorted(set(mixtures) | set(instrumentals)):
        mixture_files, instrumental_files = mixtures.get(key, []), instrumentals.get(key, [])
        if len(mixture_files) > 1 or len(instrumental_files) > 1:
            for rel in mixture_files + instrumental_files:
                others = ", ".join(r for r in mixture_files + instrumental_files if r != rel)
                rejects.append(Reject(rel, errors.AMBIGUOUS, f"several files share the pair name {key!r}: {others}", "pair"))
            continue
        if not instrumental_files:
            rejects.append(Reject(mixture_files[0], errors.UNMATCHED,
                                  f"no instrumental named like {key!r} in {instrumental_dir.name}/", "pair"))
            continue
        if not mixture_files:
            rejects.append(Reject(instrumental_files[0], errors.UNMATCHED,
                                  f"no mixture named like {key!r} in {mixture_dir.name}/", "pair"))
            continue
        candidates.append(Candidate(
            name=mixture_files[0], role="pair",
            files={"mixture": mixture_files[0], "instrumental": instrumental_files[0]},
            sources={"mixture": ["mixture"], "instrumental": ["instrumental"]},
            group_source=PurePosixPath(mixture_files[0]).relative_to(mixture_dir.relative_to(root).as_posix()).as_posix(),
            id_source=key,
        ))
    return candidates, rejects


def _discover_musdb(root: Path) -> tuple[list[Candidate], list[Reject]]:
    """MUSDB18-HQ: each track folder of `train/` and `test/` is a pair; the official split is
    kept (`test` songs are the `test` split, never `valid`: model selection must not see them)."""
    candidates: list[Candidate] = []
    rejects: list[Reject] = []
    root_resolved = root.resolve()
    subsets = [s for s in ("train", "test") if (root / s).is_dir()]
    if not subsets:
        raise VRDataError(root, "musdb layout needs train/ and/or test/ folders of track folders", "layout")
    for subset in subsets:
        if not (root / subset).resolve().is_relative_to(root_resolved):
            rejects.append(Reject(subset, errors.ESCAPES_ROOT, "symlinked folder leads outside the dataset root; "
                                                               "not scanned", "pair"))
            continue
        for track in sorted(p for p in (root / subset).iterdir() if p.is_dir() and not p.name.startswith(".")):
            track_rel = track.relative_to(root).as_posix()
            if not track.resolve().is_relative_to(root_resolved):
                rejects.append(Reject(track_rel, errors.ESCAPES_ROOT, "symlinked track folder leads outside the "
                                                                      "dataset root; not scanned", "pair"))
                continue
            files: dict[str, str] = {}
            refused: list[Reject] = []
            for stem in MUSDB_STEMS:
                matches = sorted(p for p in track.iterdir() if p.stem == stem and p.suffix.lower() in AUDIO_EXTENSIONS)
                if not matches:
                    continue
                rel = matches[0].relative_to(root).as_posix()
                reject = file_reject(matches[0], rel, root_resolved, "pair")
                if reject is not None:
                    refused.append(reject)
                files[stem] = rel
            missing = [s for s in MUSDB_STEMS if s not in files]
            if missing:
                rejects.append(Reject(track_rel, errors.MISSING, f"track lacks stems: {', '.join(missing)}", "pair"))
                continue
            if refused:
                rejects.extend(refused)
                bad = ", ".join(PurePosixPath(r.path).name for r in refused)
                rejects.append(Reject(track_rel, errors.PARTNER_REFUSED, f"its stems were refused ({bad})", "pair"))
                continue
            candidates.append(Candidate(
                name=track_rel, role="pair", files=files,
                sources={"mixture": ["mixture"], "instrumental": ["drums", "bass", "other"], "vocal": ["vocals"]},
                split=subset, tags=[f"musdb:{subset}"],
                group_source=track.name,
            ))
    return candidates, rejects


def group_key(name: str, group_by: str) -> str | None:
    """Group of an item from its relative path: `none`, `artist` ("Artist - Title"), `folder`,
    or `regex:PATTERN` (named group `group`, else group 1, else the whole match)."""
    path = PurePosixPath(name)
    if group_by == "none":
        return None
    if group_by == "artist":
        stem = path.stem if path.suffix.lower() in AUDIO_EXTENSIONS else path.name
        return stem.split(" - ", 1)[0].strip().lower() if " - " in stem else None
    if group_by == "folder":
        return path.parent.as_posix() if path.parent.as_posix() not in ("", ".") else None
    if group_by.startswith("regex:"):
        pattern = compile_group_by(group_by)
        match = pattern.search(name)
        if match is None:
            return None
        if "group" in pattern.groupindex:
            return match.group("group")
        return match.group(1) if pattern.groups else match.group(0)
    raise ValueError(f"unknown --group-by {group_by!r}: none, artist, folder or regex:PATTERN")


GROUP_BY = ("none", "artist", "folder", "regex:PATTERN")


def compile_group_by(group_by: str) -> re.Pattern | None:
    """Check `--group-by` (a ConfigError when it is wrong); its regex for `regex:PATTERN`."""
    from vr_data.errors import ConfigError

    if group_by in ("none", "artist", "folder"):
        return None
    if not group_by.startswith("regex:"):
        raise ConfigError(None, f"--group-by {group_by!r} is not one of none, artist, folder, regex:PATTERN")
    try:
        return _compiled(group_by[len("regex:"):])
    except re.error as error:
        raise ConfigError(None, f"--group-by {group_by!r}: not a valid regular expression ({error})") from None


@functools.lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)
