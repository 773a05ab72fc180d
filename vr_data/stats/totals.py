"""Totals of manifests, from their records alone (nothing is decoded).

One row per manifest: items, seconds/hours/days of audio, STFT frames, the train/valid split,
how many files have each sample rate, channel count and format, groups, and the rejects by
reason (from the manifest's `.rejects.jsonl`). Rows of the same role add up to role totals
("28.23 days of instrumental"). Pair offsets come from the scan's `checks.offset_samples`.

An item's duration is its shortest source (pairs are cropped to their common length); its frames
are what the STFT gives for that duration at the STFT's rate (`frames_for(round(seconds * rate))`,
one frame more or less than a store's count for a resampled file).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vr_data.catalog.manifest import SPLITS, Manifest, read_rejects, rejects_path
from vr_data.stats.running import Histogram, RunningMoments
from vr_data.dsp.stft import StftConfig
from vr_data.stats.settings import duration_histogram

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0


def item_frames(seconds: float, config: StftConfig) -> int:
    """STFT frames of `seconds` of audio at `config.sample_rate`."""
    return config.frames_for(int(round(seconds * config.sample_rate)))


def amount(items: int, seconds: float, frames: int) -> dict:
    """An amount of audio in every unit the report uses."""
    return {"items": items, "seconds": seconds, "hours": seconds / SECONDS_PER_HOUR,
            "days": seconds / SECONDS_PER_DAY, "frames": frames}


def manifest_row(manifest: Manifest, config: StftConfig) -> dict:
    """The totals row of one manifest (see the module docstring)."""
    splits = {split: [0, 0.0, 0] for split in SPLITS}
    files: dict[str, tuple] = {}
    total_seconds, total_frames = 0.0, 0
    groups = set()
    for item in manifest.items:
        seconds = item.duration
        frames = item_frames(seconds, config)
        total_seconds += seconds
        total_frames += frames
        counts = splits.setdefault(item.split, [0, 0.0, 0])
        counts[0] += 1
        counts[1] += seconds
        counts[2] += frames
        if item.group is not None:
            groups.add(item.group)
        for entry in item.files.values():
            files[entry.path] = (entry.sample_rate, entry.channels, entry.format)
    rejects = read_rejects(rejects_path(manifest.source_path)) if manifest.source_path is not None else []
    return {
        "input": str(manifest.source_path) if manifest.source_path is not None else None,
        "library": manifest.library,
        "role": manifest.role,
        "layout": manifest.layout,
        **amount(len(manifest.items), total_seconds, total_frames),
        "splits": {split: amount(*counts) for split, counts in splits.items()},
        "files": len(files),
        "groups": len(groups),
        "sample_rates": _counts(str(rate) for rate, _, _ in files.values()),
        "channels": _counts(str(channels) for _, channels, _ in files.values()),
        "formats": _counts(fmt for _, _, fmt in files.values()),
        "rejects": _counts(reject.code for reject in rejects),
    }


def role_totals(rows: Iterable[dict]) -> dict[str, dict]:
    """Rows summed per role: amounts, splits, file histograms and rejects."""
    totals: dict[str, dict] = {}
    for row in rows:
        total = totals.setdefault(row["role"], {"libraries": 0, **amount(0, 0.0, 0), "splits": {}, "files": 0,
                                                "sample_rates": {}, "channels": {}, "formats": {}, "rejects": {}})
        total["libraries"] += 1
        _add_amount(total, row)
        for split, values in row["splits"].items():
            _add_amount(total["splits"].setdefault(split, amount(0, 0.0, 0)), values)
        total["files"] += row.get("files", 0)
        for key in ("sample_rates", "channels", "formats", "rejects"):
            for name, count in row.get(key, {}).items():
                total[key][name] = total[key].get(name, 0) + count
    return {role: totals[role] for role in sorted(totals)}


def durations_by_role(durations: dict[str, list[float]], bins: int) -> dict[str, dict]:
    """A duration histogram (0 to the longest) and moments (seconds) per role."""
    result = {}
    for role, values in sorted(durations.items()):
        histogram: Histogram = duration_histogram(max(values, default=0.0), bins).update(values)
        result[role] = {**RunningMoments.of(values).summary(), "histogram": histogram.to_json()}
    return result


def manifest_durations(manifests: Iterable[Manifest]) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = {}
    for manifest in manifests:
        durations.setdefault(manifest.role, []).extend(item.duration for item in manifest.items)
    return durations


def pair_offsets(manifests: Iterable[Manifest]) -> dict:
    """Summary of the pairs' measured offsets (samples at the scan's check rate, and ms).

    Positive: the instrumental starts later than the mixture. `nonzero` lists every pair whose
    offset is not zero, largest |offset| first.
    """
    moments_ms = RunningMoments()
    counts: Counter = Counter()
    nonzero = []
    for manifest in manifests:
        if manifest.role != "pair":
            continue
        for item in manifest.items:
            if "offset_samples" not in item.checks:
                continue
            samples = int(item.checks["offset_samples"])
            rate = int(item.checks.get("offset_sample_rate", 44100))
            milliseconds = 1000.0 * samples / rate
            moments_ms.update([milliseconds])
            counts[samples] += 1
            if samples:
                nonzero.append({"library": manifest.library, "id": item.id, "offset_samples": samples,
                                "sample_rate": rate, "offset_ms": milliseconds,
                                "correlation": item.checks.get("correlation")})
    nonzero.sort(key=lambda record: (-abs(record["offset_ms"]), record["library"], record["id"]))
    return {"pairs": moments_ms.count, "offset_ms": moments_ms.summary(),
            "by_samples": {str(samples): count for samples, count in sorted(counts.items())}, "nonzero": nonzero}


def _add_amount(total: dict, values: dict) -> None:
    for key in ("items", "seconds", "frames"):
        total[key] += values[key]
    total["hours"] = total["seconds"] / SECONDS_PER_HOUR
    total["days"] = total["seconds"] / SECONDS_PER_DAY


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))
