"""`vrdata stats`: describe manifests and stores as rich tables, JSON and PNG figures.

Tables are laid out to be read at 80 columns (and in logs): few columns each, units in the
headers, long cells wrapped, never cut to "...".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipelines.common import (
    EXIT_DAMAGE, console, dask_executor, default_workers, humans_on_stderr, progress, user_errors, write_json,
)
from pipelines.apps import vrdata_app as app
from pipelines.quality_tables import print_content_duplicates, print_pair_checks
from vr_data.catalog.manifest import SPLITS
from vr_data.io import check_writable
from vr_data.stats.report import ProgressHooks, classify_inputs, describe


@app.command("stats")
@user_errors
def stats_command(
    paths: list[str] = typer.Argument(..., metavar="PATH...",
                                      help="Manifests (M.jsonl, or M.jsonl=ROOT) and/or store directories."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the report as JSON to this file ('-': stdout)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG figures into this directory."),
    root: Optional[Path] = typer.Option(None, help="Where a single manifest's files are on this machine."),
    content: bool = typer.Option(True, help="Decode audio / read spectrograms for content statistics."),
    fail_on_leak: bool = typer.Option(False, "--fail-on-leak", help="Exit 1 when the same audio (by content "
                                      "fingerprint) is in two splits of the manifests."),
    workers: int = typer.Option(default_workers(), min=0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler to use instead."),
) -> None:
    """Totals, content statistics, integrity findings and input normalisation of PATHS.

    For a store, the per-bin log-magnitude mean/std are saved to STORE/stats.json.
    """
    classify_inputs(paths, root)  # a wrong path fails here, before a cluster starts
    if json_out not in (None, "-"):
        check_writable(json_out)
    if plots is not None:
        _check_folder(plots)
    with humans_on_stderr(json_out == "-"):
        with dask_executor(workers if content else 0, scheduler if content else None) as executor, \
                progress() as bar:
            task = None

            def start(description: str, total: int) -> None:
                nonlocal task
                task = bar.add_task(description, total=total, rate="")

            report = describe(paths, root=root, content=content, executor=executor,
                              progress=ProgressHooks(start, lambda: bar.update(task, advance=1)))
        manifests = report["manifests"]
        if manifests:
            print_content_duplicates(manifests["integrity"]["content_duplicates"])  # leaks first
            print_section("manifests", manifests)
            print_pair_checks(manifests["pair_checks"])
        for store in report["stores"]:
            print_section(f"store {store['path']}", store)
        if plots is not None:
            from vr_data.stats.plots import write_plots

            written = write_plots(report, plots)
            console.print(f"wrote {len(written)} figures to {plots}", highlight=False)
    if json_out is not None:
        write_json(json_out, report)
    if fail_on_leak and report["manifests"] and report["manifests"]["integrity"]["content_duplicates"]["leaks"]:
        raise typer.Exit(EXIT_DAMAGE)


def _check_folder(folder: Path) -> None:
    """`--plots` must be a folder we can create and write into (checked before any work)."""
    from vr_data.errors import VRDataError

    if folder.exists() and not folder.is_dir():
        raise VRDataError(folder, "--plots exists and is not a directory")
    check_writable(folder / "check.png")


def print_section(title: str, section: dict) -> None:
    """Every table of one section of the report."""
    console.rule(f"[bold]{title}")
    console.print(_libraries_table(section))
    console.print(_splits_table(section))
    if any("files" in row for row in section["libraries"]):  # stores keep no file records
        console.print(_files_table(section))
    rejects = [(row["library"], row.get("rejects")) for row in section["libraries"] if row.get("rejects")]
    for library, counts in rejects:
        console.print(f"rejects of {library}: {_counts_cell(counts, ' ')}", highlight=False, soft_wrap=False)
    for role, totals in section["roles"].items():
        console.print(f"{totals['days']:.2f} days of {role} = {totals['hours']:.3f} h: {totals['items']} items, "
                      f"{totals['frames']} frames, {totals['libraries']} libraries", highlight=False)
    if section.get("offsets") and section["offsets"]["pairs"]:
        offsets = section["offsets"]
        console.print(f"pair offsets: {offsets['pairs']} pairs, {len(offsets['nonzero'])} not aligned to the sample, "
                      f"{offsets['offset_ms']['min']:.2f} to {offsets['offset_ms']['max']:.2f} ms", highlight=False)
    content = section.get("content")
    if content:
        for table in _content_tables(content):
            console.print(table)
        vocal = content.get("pairs", {}).get("vocal_energy_db")
        if vocal and vocal["count"]:
            console.print(f"vocal energy (mixture - instrumental) re instrumental: mean {vocal['mean']:.1f} dB, "
                          f"std {vocal['std']:.1f}, {vocal['min']:.1f} to {vocal['max']:.1f} dB", highlight=False)
        for error in content.get("errors", []):
            console.print(f"[red]not measured[/] {error['library']}/{error['id']}: {error['error']}", highlight=False)
    if section.get("stats_json"):
        console.print(f"input normalisation (per-bin log-magnitude mean/std) saved to {section['stats_json']}",
                      highlight=False)
    _print_integrity(section["integrity"])


def _table(title: str, columns: dict[str, str], keep_first: bool = False) -> Table:
    """A table whose cells wrap (or fold) when narrow: never an ellipsis. `columns` maps each
    header to its justification; `keep_first` never wraps the first column (for names of
    bounded length, like `instrumental/instrumental`), so the headers of the numbers wrap
    instead."""
    table = Table(title=title)
    for index, (header, justify) in enumerate(columns.items()):
        table.add_column(header, justify=justify, overflow="fold", no_wrap=keep_first and index == 0)
    return table


def _libraries_table(section: dict) -> Table:
    table = _table("libraries", {"library": "left", "role": "left", "items": "right", "hours": "right",
                                 "frames": "right", "groups": "right"})
    for row in section["libraries"]:
        table.add_row(row["library"], row["role"], str(row["items"]), f"{row['hours']:.3f}", str(row["frames"]),
                      str(row["groups"]))
    return table


def _splits_table(section: dict) -> Table:
    table = _table("splits (items, hours)", {"library": "left", **{split: "right" for split in SPLITS}})
    for row in section["libraries"]:
        table.add_row(row["library"], *(_split_cell(row["splits"].get(split)) for split in SPLITS))
    return table


def _files_table(section: dict) -> Table:
    table = _table("files", {"library": "left", "files": "right", "sample rates (Hz: files)": "left",
                             "channels": "left", "formats": "left"})
    for row in section["libraries"]:
        table.add_row(row["library"], str(row["files"]), _counts_cell(row["sample_rates"]),
                      _counts_cell(row["channels"]), _counts_cell(row["formats"]))
    return table


def _content_tables(content: dict) -> list[Table]:
    sources = content["sources"]
    if any("loudness_lufs" in summary for summary in sources.values()):
        loudness = _table("integrated loudness (BS.1770-4), LUFS", {"source": "left", "items": "right",
                                                                     "mean": "right", "std": "right",
                                                                     "min": "right", "max": "right"}, True)
        levels = _table("levels", {"source": "left", "peak max (dBFS)": "right", "silent (% of time)": "right",
                                   "clipped samples": "right", "clipped items": "right"}, True)
        for key, summary in sources.items():
            lufs, peak, silence = summary["loudness_lufs"], summary["peak_dbfs"], summary["silence_fraction"]
            loudness.add_row(key, str(summary["items"]), _number(lufs["mean"]), _number(lufs["std"]),
                             _number(lufs["min"]), _number(lufs["max"]))
            levels.add_row(key, _number(peak["max"]), _percent(silence["of_duration"]),
                           str(summary["clipping"]["samples"]), str(summary["clipping"]["items"]))
        return [loudness, levels]
    levels = _table("levels from the spectrograms: track RMS, dBFS", {"source": "left", "tracks": "right",
                                                                      "mean": "right", "std": "right", "min": "right",
                                                                      "max": "right", "silent frames %": "right"}, True)
    for key, summary in sources.items():
        level = summary["track_rms_dbfs"]
        levels.add_row(key, str(summary["tracks"]), _number(level["mean"]), _number(level["std"]),
                       _number(level["min"]), _number(level["max"]), _percent(summary["silence_fraction"]["of_frames"]))
    return [levels]


def _print_integrity(integrity: dict) -> None:
    duplicates = integrity.get("duplicates", [])
    leaks = integrity.get("group_leaks", [])
    if not duplicates and not leaks:
        checked = "no duplicate files, " if "duplicates" in integrity else ""  # stores keep no file hashes
        console.print(f"integrity: {checked}no group in more than one split")
        return
    if duplicates:
        table = _table(f"duplicate files ({len(duplicates)})", {"sha256": "left", "kinds": "left", "where": "left"})
        for finding in duplicates:
            where = "\n".join(f"{o['library']} ({o['role']}, {o['split']}): {o['path']}" for o in finding["occurrences"])
            table.add_row(finding["sha256"][:12], ", ".join(finding["kinds"]), where)
        console.print(table)
    if leaks:
        splits = [split for split in SPLITS if any(split in finding["splits"] for finding in leaks)]
        table = _table(f"groups in more than one split ({len(leaks)})",
                       {"role": "left", "group": "left", **{split: "left" for split in splits}})
        for finding in leaks:
            cells = ["\n".join(", ".join(m["paths"]) or m["id"] for m in finding["splits"].get(split, []))
                     for split in splits]
            table.add_row(finding["role"], finding["group"], *cells)
        console.print(table)


def _split_cell(split: dict | None) -> str:
    return f"{split['items']}, {split['hours']:.3f} h" if split and split["items"] else "0"


def _counts_cell(counts: dict | None, separator: str = ":") -> str:
    return ", ".join(f"{name}{separator}{count}" for name, count in counts.items()) if counts else "-"


def _number(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "-"
