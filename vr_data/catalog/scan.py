"""Scan a library folder into a manifest: discover, decode-check, hash, split.

Per-candidate work (`analyse_candidate`) is a pure function of its inputs and runs on any
`concurrent.futures.Executor` (a dask client's executor in the CLI). A rescan reuses the file
entries of the previous manifest whose size and mtime are unchanged: they are not re-hashed or
re-decoded (nor fingerprinted, unless their fingerprint is missing or of an older version).
Every refused input becomes a `Reject`; a scan never aborts on a bad file.

An interrupted scan resumes: with a `journal`, each finished candidate (item or rejects, with
the size and mtime of its files) is appended to it as it finishes, and a rerun with the same
root and options takes every candidate whose files are unchanged from there.

Silence is judged per source, as the model will hear it: the mixture, and the instrumental
summed from its files (a MUSDB song without drums has an all-zero drums stem and is fine). A
pair's vocal source is never judged: a silent vocals stem is a vocal-free song.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vr_data import errors
from vr_data.audio import load_audio, probe
from vr_data.audio.decode import decode_file, silence_reason
from vr_data.errors import ConfigError, Reject, VRDataError
from vr_data.catalog.layouts import LAYOUT_ROLE, LAYOUTS, Candidate, compile_group_by, compile_pair_pattern, discover, group_key
from vr_data.catalog.manifest import (
    FileEntry, Item, Manifest, file_sha256, item_id, read_manifest, resolve_under, split_for,
)
from vr_data.dsp.pairs import measure_pair, pair_flags
from vr_data.dsp.fingerprint import encode as encode_fingerprint, fingerprint_audio
from vr_data.dsp.fingerprint import is_current as is_current_fingerprint
from vr_data.io import os_reason
from vr_data.parallel import map_unordered

CHECK_SAMPLE_RATE = 44100


@dataclass(frozen=True)
class ScanOptions:
    """Scan settings; durations in seconds, levels in dBFS."""

    layout: str
    library: str = ""
    valid_fraction: float = 0.1
    group_by: str = "none"
    pair_pattern: str | None = None
    min_seconds: float = 1.0
    silence_dbfs: float = -60.0
    downmix: bool = False
    length_tolerance: float = 0.5   # pairs: max |mixture - instrumental| duration difference
    max_offset_ms: float = 5.0      # pairs: max time offset between mixture and instrumental
    offset_window: float = 30.0     # pairs: seconds from the start used for the offset search
    offset_search: float = 1.0      # pairs: largest offset looked for, seconds
    fingerprint: bool = True        # a content fingerprint per file (vr_data.dsp.fingerprint)
    pair_checks: str = "report"     # pairs: "report" (flags in the manifest) or "strict" (flagged pairs rejected)

    def __post_init__(self) -> None:
        """Refuse impossible settings before any file is read (ConfigError, one line)."""
        if self.layout not in LAYOUTS:
            raise ConfigError(None, f"--layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        # 1 (everything in valid) is allowed here for held-out libraries built in code; the CLI
        # refuses it, where it is almost always a typo for 0.1.
        if not 0.0 <= self.valid_fraction <= 1.0:
            raise ConfigError(None, f"--valid-fraction must be in [0, 1), not {self.valid_fraction:g}")
        compile_group_by(self.group_by)
        if self.pair_pattern is not None:
            if self.layout != "pairs":
                raise ConfigError(None, "--pair-pattern applies to the pairs layout only")
            compile_pair_pattern(self.pair_pattern)
        for name in ("min_seconds", "length_tolerance", "max_offset_ms", "offset_window", "offset_search"):
            value = getattr(self, name)
            if not value >= 0 or math.isinf(value):
                raise ConfigError(None, f"--{name.replace('_', '-')} must be a finite number >= 0, not {value}")
        if self.pair_checks not in ("report", "strict"):
            raise ConfigError(None, f"--pair-checks must be report or strict, not {self.pair_checks!r}")
        if math.isnan(self.silence_dbfs) or self.silence_dbfs > 0:
            raise ConfigError(None, f"--silence-dbfs must be <= 0 dBFS (-inf: no silence check), not {self.silence_dbfs}")

    def to_json(self) -> dict:
        record = dict(self.__dict__)
        if math.isinf(record["silence_dbfs"]):
            record["silence_dbfs"] = None  # JSON has no -inf; null means no silence check
        return record


@dataclass
class ScanResult:
    manifest: Manifest
    rejects: list[Reject]
    hashed: int = 0   # files hashed and decoded in this run
    reused: int = 0   # files taken from the previous manifest (or the journal) unchanged
    reject_counts: dict[str, int] = field(default_factory=dict)
    resumed: int = 0  # candidates taken from the journal of an interrupted scan
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """A summary for `vrdata scan --json` (the manifest itself is the file written)."""
        splits = {}
        for item in self.manifest.items:
            split = splits.setdefault(item.split, {"items": 0, "hours": 0.0})
            split["items"] += 1
            split["hours"] += item.duration / 3600.0
        return {
            "library": self.manifest.library, "role": self.manifest.role, "layout": self.manifest.layout,
            "root": str(self.manifest.root), "items": len(self.manifest.items), "hours": self.manifest.hours,
            "splits": splits, "hashed": self.hashed, "reused": self.reused, "resumed": self.resumed,
            "rejects": dict(sorted(self.reject_counts.items())), "warnings": list(self.warnings),
        }


class ScanJournal:
    """Finished candidates of a scan, appended as they finish, so a killed scan resumes.

    Line 1 names the root and options; each further line is one candidate: its name, the
    `[size, mtime_ns]` of its files, and its item or rejects. A journal of another root or other
    options is ignored (and replaced); a torn last line (a kill mid-write) is ignored.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    def load(self, root: Path, options: ScanOptions) -> dict[str, dict]:
        """The journalled candidates by name, when the journal is of this root and options."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return {}
        if not lines or _json_or_none(lines[0]) != self._header(root, options):
            return {}
        done = {}
        for line in lines[1:]:
            record = _json_or_none(line)
            if isinstance(record, dict) and "name" in record:
                done[record["name"]] = record
        return done

    def start(self, root: Path, options: ScanOptions, keep: list[dict]) -> None:
        """Rewrite the journal with its header and the records still valid, then append."""
        lines = [json.dumps(self._header(root, options), sort_keys=True)]
        lines += [json.dumps(record, sort_keys=True) for record in keep]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            self._handle = open(self.path, "a", encoding="utf-8")
        except OSError as error:
            raise VRDataError(self.path, f"cannot write the scan journal ({os_reason(error)})") from None

    def add(self, record: dict) -> None:
        # One write per line, flushed: a kill loses at most the line being written.
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    @staticmethod
    def _header(root: Path, options: ScanOptions) -> dict:
        return {"kind": "vr-scan-journal", "root": str(root), "options": options.to_json()}


def journal_path(manifest_path: str | Path) -> Path:
    """Where `vrdata scan --out M.jsonl` journals its progress: `.M.jsonl.journal` beside it."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f".{manifest_path.name}.journal")


def previous_manifest(out: str | Path, root: Path, options: ScanOptions, force: bool = False) -> Manifest | None:
    """The manifest already at `out`, to rescan incrementally, or None.

    Refuses (unless `force`) to overwrite what is not a manifest of this library: another
    library's manifest, another layout's, or a file that is not a manifest at all.
    """
    out = Path(out)
    if out.is_dir():
        raise VRDataError(out, "--out is a directory; give the manifest file to write (M.jsonl)")
    if not out.exists() and not out.is_symlink():
        return None
    try:
        previous = read_manifest(out, root=root)
    except VRDataError as error:
        if force:
            return None
        raise VRDataError(out, f"exists and is not a readable manifest ({error.reason}); pass --force to "
                               "replace it") from None
    library = options.library or root.name
    same = previous.library == library and previous.layout in ("", options.layout)
    if same:
        return previous
    if force:
        return None  # replaced whole: nothing of another library is reused
    raise VRDataError(out, f"holds the manifest of library {previous.library!r} (layout {previous.layout}), "
                           f"not {library!r} (layout {options.layout}); choose another --out or pass --force")


def scan(
    root: str | Path,
    options: ScanOptions,
    executor: Executor | None = None,
    previous: Manifest | None = None,
    on_item: Callable[[Item | None, list[Reject]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    journal: ScanJournal | None = None,
    exclusions: dict | None = None,
) -> ScanResult:
    """Scan `root` with `options.layout`; `previous` (same root) makes the scan incremental.

    `journal` records each finished candidate and, when it holds a killed scan's work for the
    same root and options, resumes it (the caller removes it once the manifest is written).
    `on_start(candidates)` is called once discovery has found the candidates, then
    `on_item(item_or_None, rejects)` once per candidate as it finishes (progress).
    `exclusions` (`vr_data.catalog.exclusions.read_exclusions`) turns the items it lists into
    rejects with its code (`leak`, `duplicate`).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise VRDataError(root, "dataset root is not a directory", errors.MISSING)
    candidates, rejects = discover(root, options.layout, options.pair_pattern)
    if on_start is not None:
        on_start(len(candidates))
    reusable: dict[str, FileEntry] = {}
    previous_checks: dict[str, dict] = {}
    if previous is not None:
        for item in previous.items:
            for entry in item.files.values():
                reusable[entry.path] = entry
            previous_checks[item.id] = item.checks
    journalled = journal.load(root, options) if journal is not None else {}
    items: list[Item] = []
    hashed = reused = resumed = 0
    tasks, kept = [], []
    stamps: dict[str, dict | None] = {}  # taken before analysis: a file changed meanwhile is redone on resume
    for candidate in candidates:
        record = journalled.get(candidate.name)
        outcome = _journalled_outcome(root, candidate, record) if record is not None else None
        if outcome is None:
            if journal is not None:
                stamps[candidate.name] = _stamps(root, candidate)
            tasks.append((root, candidate, options, {rel: reusable.get(rel) for rel in candidate.files.values()},
                          previous_checks.get(item_id(candidate.id_source or candidate.name))))
            continue
        kept.append(record)
        item, item_rejects = outcome
        resumed += 1
        reused += len(candidate.files)
        rejects.extend(item_rejects)
        if item is not None:
            items.append(item)
        if on_item is not None:
            on_item(item, item_rejects)
    if journal is not None:
        journal.start(root, options, kept)
    try:
        for task, (item, item_rejects, n_hashed, n_reused) in map_unordered(_analyse_task, tasks, executor):
            hashed += n_hashed
            reused += n_reused
            rejects.extend(item_rejects)
            if item is not None:
                items.append(item)
            if journal is not None:
                journal.add(_journal_record(task[1], stamps[task[1].name], item, item_rejects))
            if on_item is not None:
                on_item(item, item_rejects)
    finally:
        if journal is not None:
            journal.close()
    items.sort(key=lambda item: item.id)
    library = options.library or root.name
    if exclusions:
        kept = []
        for item in items:
            exclusion = exclusions.get((library, item.id))
            if exclusion is None:
                kept.append(item)
            else:
                rejects.append(Reject(item.id, exclusion.code, f"in the exclusion list: {exclusion.reason}", item.role))
        items = kept
    manifest = Manifest(
        library=library, role=LAYOUT_ROLE[options.layout], root=root, items=items,
        layout=options.layout, options=options.to_json(),
    )
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.code] = counts.get(reject.code, 0) + 1
    return ScanResult(manifest, sorted(rejects, key=lambda r: (r.path, r.code)), hashed, reused, counts,
                      resumed=resumed, warnings=_split_warnings(manifest, options))


def _split_warnings(manifest: Manifest, options: ScanOptions) -> list[str]:
    """A warning when `--valid-fraction` > 0 put nothing in `valid` (a few large groups, or few
    items: 16 pairs at 0.1 can all hash to train); layout-dictated splits (MUSDB) are exempt."""
    drawn = [item for item in manifest.items if not any(tag.startswith("musdb:") for tag in item.tags)]
    if options.valid_fraction <= 0 or not drawn or any(item.split == "valid" for item in drawn):
        return []
    keys = {item.group or item.id for item in drawn}
    unit = "groups" if options.group_by != "none" else "items"
    return [f"the valid split is empty: none of {len(keys)} {unit} fell in the {options.valid_fraction:g} "
            f"fraction drawn for valid; raise --valid-fraction or add items"]


def _stamps(root: Path, candidate: Candidate) -> dict[str, list[int]] | None:
    """`[size, mtime_ns]` of each file of a candidate, or None if one cannot be stat'ed."""
    stamps = {}
    for rel in candidate.files.values():
        try:
            stat = os.stat(root / rel)
        except OSError:
            return None
        stamps[rel] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def _journal_record(candidate: Candidate, stamps: dict | None, item: Item | None, rejects: list[Reject]) -> dict:
    return {"name": candidate.name, "stamps": stamps,
            "item": item.to_json() if item is not None else None, "rejects": [r.to_json() for r in rejects]}


def _journalled_outcome(root: Path, candidate: Candidate, record: dict) -> tuple[Item | None, list[Reject]] | None:
    """A journalled candidate's item or rejects, when its files are unchanged since; else None."""
    stamps = _stamps(root, candidate)
    if stamps is None or record.get("stamps") != stamps:
        return None
    try:
        item = Item.from_json(record["item"]) if record.get("item") is not None else None
        rejects = [Reject(**reject) for reject in record.get("rejects", [])]
    except (ValueError, KeyError, TypeError):
        return None
    return item, rejects


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _analyse_task(task):
    return analyse_candidate(*task)


def analyse_candidate(
    root: Path, candidate: Candidate, options: ScanOptions,
    previous: dict[str, FileEntry | None], previous_checks: dict | None = None,
) -> tuple[Item | None, list[Reject], int, int]:
    """Check, hash and describe one candidate: `(item or None, rejects, files hashed, files reused)`.

    Silence is judged per source (module docstring): a file alone when it is a source by itself,
    the sum of the files of a source made of several.
    """
    files: dict[str, FileEntry] = {}
    rejects: list[Reject] = []
    hashed = reused = 0
    alone, summed = _silence_plan(candidate)
    for key, rel in candidate.files.items():
        path = root / rel
        try:
            stat = path.stat()
            old = previous.get(rel)
            if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns \
                    and (not options.fingerprint or is_current_fingerprint(old.fingerprint)):
                files[key] = old
                reused += 1
                continue
            files[key] = describe_file(root, rel, options, judge_silence=key in alone)
            hashed += 1
        except VRDataError as error:
            rejects.append(Reject.from_error(error, rel, candidate.role))
        except OSError as error:
            rejects.append(Reject(rel, errors.UNREADABLE, f"cannot read file ({os_reason(error)})", candidate.role))
    if not rejects and hashed:
        for source, keys in summed.items():
            try:
                _check_summed_silence(root, [files[key].path for key in keys], source, options)
            except VRDataError as error:
                return None, [Reject(candidate.name, error.code, error.reason, candidate.role)], hashed, reused
    if rejects:
        # A pair with one bad member is refused whole; say why for the healthy member too.
        bad = ", ".join(r.path for r in rejects)
        for key, entry in files.items():
            rejects.append(Reject(entry.path, errors.PARTNER_REFUSED, f"its partner was refused ({bad})", candidate.role))
        return None, rejects, hashed, reused
    identifier = item_id(candidate.id_source or candidate.name)
    checks: dict = {}
    if candidate.role == "pair":
        if reused == len(files) and previous_checks and "flags" in previous_checks:
            checks = previous_checks
        else:
            try:
                checks = pair_checks(root, candidate, files, options)
            except VRDataError as error:
                return None, [Reject.from_error(error, candidate.name, "pair")], hashed, reused
        problem = _pair_problem(checks, options)
        if problem is not None:
            code, reason = problem
            return None, [Reject(candidate.name, code, reason, "pair")], hashed, reused
    group = group_key(candidate.group_source or candidate.name, options.group_by)
    split = candidate.split or split_for(group or identifier, options.valid_fraction)
    item = Item(
        id=identifier, role=candidate.role, files=files, sources=candidate.sources, split=split,
        group=group, tags=list(candidate.tags), checks=checks,
    )
    return item, [], hashed, reused


def _silence_plan(candidate: Candidate) -> tuple[set[str], dict[str, list[str]]]:
    """File keys judged for silence alone, and sources (name -> keys) judged on their sum."""
    alone: set[str] = set()
    summed: dict[str, list[str]] = {}
    for source, keys in candidate.sources.items():
        if candidate.role == "pair" and source == "vocal":
            continue  # a silent vocals stem is a vocal-free song
        if len(keys) == 1:
            alone.add(keys[0])
        else:
            summed[source] = list(keys)
    return alone, summed


def _check_summed_silence(root: Path, rels: list[str], source: str, options: ScanOptions) -> None:
    """Raise SILENT when the sum of `rels` (decoded at the first file's rate) is silent."""
    if options.silence_dbfs is None or math.isinf(options.silence_dbfs):
        return
    total = None
    rate = probe(root / rels[0]).sample_rate
    for rel in rels:
        audio = load_audio(root / rel, rate, downmix=options.downmix, silence_dbfs=None)
        if total is None:
            total = audio
        else:
            length = min(total.shape[1], audio.shape[1])
            total = total[:, :length] + audio[:, :length]
    reason = silence_reason(float(np.abs(total).max()) if total.size else 0.0, options.silence_dbfs)
    if reason is not None:
        raise VRDataError(None, f"{source} ({' + '.join(Path(rel).stem for rel in rels)}) is {reason}", errors.SILENT)


def describe_file(root: Path, rel: str, options: ScanOptions, judge_silence: bool = True) -> FileEntry:
    """Decode-check, hash and fingerprint one file (raises VRDataError with a reject code).

    `samples` is the length the file decodes to, never its header's claim (a truncated mp3
    keeps its full header duration); a file that decodes short of its header is refused as
    `truncated`. `judge_silence=False` skips the silence check (a stem judged in a sum).
    """
    path = root / rel
    stat = path.stat()
    # Decode at the native rate: the checks need every sample, not a resampled copy.
    info, audio = decode_file(path, downmix=options.downmix, min_seconds=options.min_seconds,
                              silence_dbfs=options.silence_dbfs if judge_silence else None)
    # Fingerprinted from the audio already decoded: no second read (docs/performance.md, scan).
    fingerprint = encode_fingerprint(*fingerprint_audio(audio, info.sample_rate)) if options.fingerprint else None
    return FileEntry(
        path=rel, sha256=file_sha256(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
        sample_rate=info.sample_rate, channels=info.channels, samples=info.samples, format=info.format,
        fingerprint=fingerprint,
    )


def pair_checks(root: Path, candidate: Candidate, files: dict[str, FileEntry], options: ScanOptions) -> dict:
    """The pair checks of a pair (`measure_excerpts` on the first `offset_window` seconds, mono
    at 44.1 kHz), its length difference (s), whether its files' rates differ, and the `flags` it
    fails (`vr_data.dsp.pairs.pair_flags`). A positive offset: the instrumental starts later."""
    mixture_duration = sum(files[k].duration for k in candidate.sources["mixture"][:1])
    instrumental_duration = min(files[k].duration for k in candidate.sources["instrumental"])
    window = options.offset_window + options.offset_search
    mixture = _mono_excerpt(root, [files[k].path for k in candidate.sources["mixture"]], window, options)
    instrumental = _mono_excerpt(root, [files[k].path for k in candidate.sources["instrumental"]], window, options)
    rates = {files[k].sample_rate for keys in candidate.sources.values() for k in keys}
    checks = {
        "length_diff_seconds": round(mixture_duration - instrumental_duration, 6),
        **measure_excerpts(mixture, instrumental, int(options.offset_search * CHECK_SAMPLE_RATE)),
        "rate_mismatch": len(rates) > 1,
    }
    checks["flags"] = pair_flags(checks)
    return checks


def measure_excerpts(mixture: np.ndarray, instrumental: np.ndarray, max_lag: int) -> dict:
    """The audio checks of a pair from mono excerpts at `CHECK_SAMPLE_RATE`: offset (samples,
    within +-`max_lag`) and correlation by cross-correlation, polarity, then the measures of
    `vr_data.dsp.pairs.measure_pair` at that offset."""
    lag, correlation = estimate_offset(mixture, instrumental, max_lag)
    polarity = 1
    inverted_lag, inverted = estimate_offset(mixture, -instrumental, max_lag)
    if inverted > max(correlation, 0.0):  # an instrumental with its polarity inverted
        lag, correlation, polarity = inverted_lag, inverted, -1
    return {
        "offset_samples": int(lag),
        "offset_sample_rate": CHECK_SAMPLE_RATE,
        "correlation": round(float(correlation), 4),
        **measure_pair(mixture, instrumental, CHECK_SAMPLE_RATE, int(lag)),
        "polarity": polarity,
    }


def _mono_excerpt(root: Path, rels: list[str], seconds: float, options: ScanOptions) -> np.ndarray:
    total = None
    for rel in rels:
        audio = load_audio(root / rel, CHECK_SAMPLE_RATE, downmix=options.downmix, max_seconds=seconds,
                           silence_dbfs=None).mean(axis=0)
        if total is None:
            total = audio
        else:
            n = min(len(total), len(audio))
            total = total[:n] + audio[:n]
    return total


def estimate_offset(mixture: np.ndarray, instrumental: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (samples) maximising the normalised cross-correlation within ±`max_lag`, and its value.

    `instrumental[t] ~ mixture[t - lag]`... precisely: positive lag = instrumental delayed.
    """
    n = min(len(mixture), len(instrumental))
    mixture = mixture[:n] - mixture[:n].mean()
    instrumental = instrumental[:n] - instrumental[:n].mean()
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(instrumental, size) * np.conj(np.fft.rfft(mixture, size))
    correlation = np.fft.irfft(spectrum, size)
    max_lag = min(max_lag, n - 1)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([correlation[: max_lag + 1], correlation[size - max_lag:]])
    best = int(np.argmax(values))
    norm = float(np.sqrt(np.dot(mixture, mixture) * np.dot(instrumental, instrumental))) or 1.0
    return int(lags[best]), float(values[best] / norm)


def _pair_problem(checks: dict, options: ScanOptions) -> tuple[str, str] | None:
    diff = abs(checks.get("length_diff_seconds", 0.0))
    if diff > options.length_tolerance:
        return errors.LENGTH_MISMATCH, (
            f"mixture and instrumental lengths differ by {diff:.2f} s (tolerance {options.length_tolerance:g} s)")
    offset_ms = abs(checks.get("offset_samples", 0)) / checks.get("offset_sample_rate", CHECK_SAMPLE_RATE) * 1000
    if offset_ms > options.max_offset_ms:
        return errors.OFFSET, (
            f"instrumental is offset by {checks['offset_samples']} samples ({offset_ms:.1f} ms) from the mixture "
            f"(threshold {options.max_offset_ms:g} ms)")
    if options.pair_checks == "strict" and checks.get("flags"):
        details = ", ".join(f"{flag} ({_flag_value(flag, checks)})" for flag in checks["flags"])
        return errors.PAIR_CHECK, f"fails pair checks: {details} (thresholds: docs/stats.md, pair checks)"
    return None


def _flag_value(flag: str, checks: dict) -> str:
    """The measure behind a pair-check flag, for a reject reason."""
    key = {"offset": "offset_samples", "gain": "gain_db", "residual_loud": "residual_db",
           "instrumental_louder": "instrumental_over_mixture_db", "low_correlation": "correlation",
           "clipping": "clipped_fraction", "residual_bleed": "residual_bleed", "polarity": "polarity"}.get(flag)
    return f"{key} {checks.get(key)}" if key else "sample rates differ"


def verify_manifest(manifest: Manifest, executor: Executor | None = None,
                    on_file: Callable[[str], None] | None = None) -> list[Reject]:
    """Re-hash every file of `manifest`; problems (missing, changed) as Rejects (empty = all good)."""
    entries = sorted({entry.path: entry for item in manifest.items for entry in item.files.values()}.values(),
                     key=lambda e: e.path)
    problems: list[Reject] = []
    for entry, problem in map_unordered(_verify_entry, [(manifest.root, e) for e in entries], executor):
        if problem is not None:
            problems.append(problem)
        if on_file is not None:
            on_file(entry[1].path)
    return sorted(problems, key=lambda r: r.path)


def _verify_entry(task) -> Reject | None:
    root, entry = task
    try:
        path = resolve_under(root, entry.path)
    except VRDataError as error:
        return Reject.from_error(error, entry.path)
    if not path.is_file():
        return Reject(entry.path, errors.MISSING, f"file not found under {root}")
    digest = file_sha256(path)
    if digest != entry.sha256:
        return Reject(entry.path, errors.HASH_MISMATCH, f"sha256 {digest[:12]}... differs from the manifest's {entry.sha256[:12]}...")
    return None


def hours_by_split(manifest: Manifest) -> dict[str, float]:
    totals: dict[str, float] = {}
    for item in manifest.items:
        totals[item.split] = totals.get(item.split, 0.0) + item.duration / 3600.0
    return totals


__all__ = ["ScanJournal", "ScanOptions", "ScanResult", "journal_path", "previous_manifest", "scan",
           "verify_manifest", "estimate_offset"]
