"""Scan a library folder into a manifest: discover, decode-check, hash, split.

Per-candidate work (`analyse_candidate`) is a pure function of its inputs and runs on any
`concurrent.futures.Executor` (a dask client's executor in the CLI). A rescan reuses the file
entries of the previous manifest whose size and mtime are unchanged: they are not re-hashed or
re-decoded. Every refused input becomes a `Reject`; a scan never aborts on a bad file.
"""

from __future__ import annotations


from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vr_data import errors
from vr_data.audio import load_audio, probe
from vr_data.errors import Reject, VRDataError
from vr_data.catalog.layouts import LAYOUT_ROLE, Candidate, discover, group_key
from vr_data.catalog.manifest import FileEntry, Item, Manifest, file_sha256, item_id, resolve_under, split_for
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

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ScanResult:
    manifest: Manifest
    rejects: list[Reject]
    hashed: int = 0   # files hashed and decoded in this run
    reused: int = 0   # files taken from the previous manifest unchanged
    reject_counts: dict[str, int] = field(default_factory=dict)


def scan(
    root: str | Path,
    options: ScanOptions,
    executor: Executor | None = None,
    previous: Manifest | None = None,
    on_item: Callable[[Item | None, list[Reject]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ScanResult:
    """Scan `root` with `options.layout`; `previous` (same root) makes the scan incremental.

    `on_start(candidates)` is called once discovery has found the candidates, then
    `on_item(item_or_None, rejects)` once per candidate as it finishes (progress).
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
    tasks = [(root, candidate, options, {rel: reusable.get(rel) for rel in candidate.files.values()},
              previous_checks.get(item_id(candidate.id_source or candidate.name))) for candidate in candidates]
    items: list[Item] = []
    hashed = reused = 0
    for _, (item, item_rejects, n_hashed, n_reused) in map_unordered(_analyse_task, tasks, executor):
        hashed += n_hashed
        reused += n_reused
        rejects.extend(item_rejects)
        if item is not None:
            items.append(item)
        if on_item is not None:
            on_item(item, item_rejects)
    items.sort(key=lambda item: item.id)
    manifest = Manifest(
        library=options.library or root.name, role=LAYOUT_ROLE[options.layout], root=root, items=items,
        layout=options.layout, options=options.to_json(),
    )
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.code] = counts.get(reject.code, 0) + 1
    return ScanResult(manifest, sorted(rejects, key=lambda r: (r.path, r.code)), hashed, reused, counts)


def _analyse_task(task):
    return analyse_candidate(*task)


def analyse_candidate(
    root: Path, candidate: Candidate, options: ScanOptions,
    previous: dict[str, FileEntry | None], previous_checks: dict | None = None,
) -> tuple[Item | None, list[Reject], int, int]:
    """Check, hash and describe one candidate: `(item or None, rejects, files hashed, files reused)`."""
    files: dict[str, FileEntry] = {}
    rejects: list[Reject] = []
    hashed = reused = 0
    for key, rel in candidate.files.items():
        path = root / rel
        try:
            stat = path.stat()
            old = previous.get(rel)
            if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
                files[key] = old
                reused += 1
                continue
            files[key] = describe_file(root, rel, options)
            hashed += 1
        except VRDataError as error:
            rejects.append(Reject.from_error(error, rel, candidate.role))
        except OSError as error:
            rejects.append(Reject(rel, errors.UNREADABLE, f"cannot read file ({error.strerror})", candidate.role))
    if rejects:
        # A pair with one bad member is refused whole; say why for the healthy member too.
        bad = ", ".join(r.path for r in rejects)
        for key, entry in files.items():
            rejects.append(Reject(entry.path, errors.PARTNER_REFUSED, f"its partner was refused ({bad})", candidate.role))
        return None, rejects, hashed, reused
    identifier = item_id(candidate.id_source or candidate.name)
    checks: dict = {}
    if candidate.role == "pair":
        if reused == len(files) and previous_checks:
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


def describe_file(root: Path, rel: str, options: ScanOptions) -> FileEntry:
    """Decode-check and hash one file (raises VRDataError with a reject code)."""
    path = root / rel
    stat = path.stat()
    info = probe(path)
    # Decode at the native rate: the checks need every sample, not a resampled copy.
    load_audio(path, info.sample_rate, downmix=options.downmix, min_seconds=options.min_seconds,
               silence_dbfs=options.silence_dbfs)
    return FileEntry(
        path=rel, sha256=file_sha256(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
        sample_rate=info.sample_rate, channels=info.channels, samples=info.samples, format=info.format,
    )


def pair_checks(root: Path, candidate: Candidate, files: dict[str, FileEntry], options: ScanOptions) -> dict:
    """Length difference (s) and time offset (samples at 44.1 kHz) of a pair's instrumental
    relative to its mixture, by cross-correlation of the first `offset_window` seconds.

    A positive offset means the instrumental starts later than the mixture.
    """
    mixture_duration = sum(files[k].duration for k in candidate.sources["mixture"][:1])
    instrumental_duration = min(files[k].duration for k in candidate.sources["instrumental"])
    window = options.offset_window + options.offset_search
    mixture = _mono_excerpt(root, [files[k].path for k in candidate.sources["mixture"]], window, options)
    instrumental = _mono_excerpt(root, [files[k].path for k in candidate.sources["instrumental"]], window, options)
    lag, correlation = estimate_offset(mixture, instrumental, int(options.offset_search * CHECK_SAMPLE_RATE))
    return {
        "length_diff_seconds": round(mixture_duration - instrumental_duration, 6),
        "offset_samples": int(lag),
        "offset_sample_rate": CHECK_SAMPLE_RATE,
        "correlation": round(float(correlation), 4),
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
    return None


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


__all__ = ["ScanOptions", "ScanResult", "scan", "verify_manifest", "estimate_offset"]
