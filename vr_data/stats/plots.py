"""PNG figures of a `vrdata stats` report (matplotlib, Agg backend: no display needed).

Drawn from the report alone (so also from a saved `--json` file), per section: durations per
role, loudness per role/source (integrated LUFS for manifests; track RMS dBFS for stores), the
mean log-magnitude spectrum per role/source with a +-1 std band, and split sizes (hours and
items) per role. Files: `manifests-<figure>.png` and `store-<name>-<figure>.png`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

SPLIT_COLOURS = {"train": "#4477aa", "valid": "#ee6677", "test": "#228833"}


def write_plots(report: dict, directory: str | Path) -> list[Path]:
    """Write the figures of `report` into `directory`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sections = []
    if report.get("manifests"):
        sections.append(("manifests", report["manifests"], "manifests"))
    for store in report.get("stores", []):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(store["path"]).name) or "store"
        sections.append((f"store-{name}", store, f"store {Path(store['path']).name}"))
    written = []
    for prefix, section, title in sections:
        written.append(_durations(section, title, directory / f"{prefix}-durations.png"))
        written.append(_splits(section, title, directory / f"{prefix}-splits.png"))
        content = section.get("content")
        if content:
            written.append(_levels(content, title, directory / f"{prefix}-loudness.png"))
            sample_rate, n_fft = _transform(report, section)
            written.append(_spectrum(content, sample_rate, n_fft, title, directory / f"{prefix}-spectrum.png"))
    return written


def _figure(rows: int, width: float = 8.0, height: float = 2.4):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(max(rows, 1), 1, figsize=(width, 0.8 + height * max(rows, 1)), squeeze=False)
    return figure, [axis[0] for axis in axes]


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vr_data.io import atomic_write_with

    figure.tight_layout()
    atomic_write_with(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)
    return path


def _bars(axis, histogram: dict, zoom: bool = False) -> None:
    """Draw a histogram; `zoom` limits the x axis to the occupied bins (fixed ranges are wide)."""
    from matplotlib.ticker import MaxNLocator

    edges, counts = np.asarray(histogram["edges"]), np.asarray(histogram["counts"])
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.8, edgecolor="white", linewidth=0.3)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    occupied = np.flatnonzero(counts)
    if zoom and occupied.size:
        margin = 3
        axis.set_xlim(edges[max(occupied[0] - margin, 0)], edges[min(occupied[-1] + 1 + margin, edges.size - 1)])


def _durations(section: dict, title: str, path: Path) -> Path:
    roles = sorted(section["durations"])
    figure, axes = _figure(len(roles))
    for axis, role in zip(axes, roles):
        entry = section["durations"][role]
        edges = np.asarray(entry["histogram"]["edges"])
        scale, unit = (60.0, "minutes") if edges[-1] > 120.0 else (1.0, "seconds")  # short libraries in seconds
        _bars(axis, {**entry["histogram"], "edges": edges / scale})
        axis.set_title(f"{role}: {entry['count']} items", fontsize=10)
        axis.set_xlabel(f"duration ({unit})")
        axis.set_ylabel("items")
    if not roles:
        axes[0].set_axis_off()
    figure.suptitle(f"{title}: durations")
    return _save(figure, path)


def _splits(section: dict, title: str, path: Path) -> Path:
    roles = sorted(section["roles"])
    figure, (hours_axis, items_axis) = _figure(2, height=2.6)
    positions = np.arange(len(roles))
    for axis, unit in ((hours_axis, "hours"), (items_axis, "items")):
        bottom = np.zeros(len(roles))
        splits = sorted({split for role in roles for split in section["roles"][role]["splits"]})
        for split in splits:
            values = np.array([section["roles"][role]["splits"].get(split, {}).get(unit, 0) for role in roles], float)
            axis.bar(positions, values, bottom=bottom, label=split, color=SPLIT_COLOURS.get(split))
            bottom += values
        axis.set_xticks(positions, roles)
        axis.set_ylabel(unit)
        if splits:
            axis.legend(fontsize=8)
    figure.suptitle(f"{title}: split sizes")
    return _save(figure, path)


def _levels(content: dict, title: str, path: Path) -> Path:
    keys = sorted(content["sources"])
    figure, axes = _figure(len(keys))
    for axis, key in zip(axes, keys):
        summary = content["sources"][key]
        if "loudness_lufs" in summary:  # manifests: integrated loudness of the audio
            entry, unit = summary["loudness_lufs"], "integrated loudness (LUFS, BS.1770-4)"
        else:  # stores: RMS of each track from its spectrogram
            entry, unit = summary["track_rms_dbfs"], "track RMS level (dBFS, from the spectrogram)"
        _bars(axis, entry["histogram"], zoom=True)
        mean = entry.get("mean")
        axis.set_title(f"{key}: mean {mean:.1f}" if mean is not None else key, fontsize=10)
        axis.set_xlabel(unit)
        axis.set_ylabel("items")
    if not keys:
        axes[0].set_axis_off()
    figure.suptitle(f"{title}: levels")
    return _save(figure, path)


def _spectrum(content: dict, sample_rate: int, n_fft: int, title: str, path: Path) -> Path:
    keys = sorted(content["log_magnitude"])
    figure, axes = _figure(len(keys), height=2.2)
    for axis, key in zip(axes, keys):
        entry = content["log_magnitude"][key]
        mean, std = np.asarray(entry["mean"], float), np.asarray(entry["std"], float)
        kilohertz = np.arange(mean.size) * sample_rate / n_fft / 1000.0
        axis.fill_between(kilohertz, mean - std, mean + std, alpha=0.25, linewidth=0, label="+-1 std")
        axis.plot(kilohertz, mean, linewidth=1.0, label="mean")
        axis.set_title(key, fontsize=10)
        axis.set_ylabel("ln(|X| + eps)")
        axis.legend(fontsize=8, loc="upper right")
    for axis in axes[1:]:
        axis.sharex(axes[0])
        axis.sharey(axes[0])
    axes[-1].set_xlabel("frequency (kHz)")
    figure.suptitle(f"{title}: mean log-magnitude spectrum per role/source")
    return _save(figure, path)


def _transform(report: dict, section: dict) -> tuple[int, int]:
    """Sample rate and n_fft of the section's spectra (the store's own, or the report's)."""
    stft = section.get("stft") or report["settings"]["stft"]
    return int(stft["sample_rate"]), int(stft["n_fft"])
