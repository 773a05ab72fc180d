"""`vrdata stats`: describe manifests and stores as rich tables, JSON and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipelines.common import console, dask_executor, default_workers, progress, user_errors
from pipelines.vrdata import app
from vr_data.stats.report import ProgressHooks, classify_inputs, describe
from vr_data.io import atomic_write_bytes


@app.command("stats")
@user_errors
def stats_command(
    paths: list[Path] = typer.Argument(..., help="Manifests (M.jsonl) and/or store directories."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG figures into this directory."),
    root: Optional[Path] = typer.Option(None, help="Where a single manifest's files are on this machine."),
    content: bool = typer.Option(True, help="Decode audio / read spectrograms for content statistics."),
    workers: int = typer.Option(default_workers(), help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler to use instead."),
) -> None:
    """Totals, content statistics, integrity findings and input normalisation of PATHS.

    For a store, the per-bin log-magnitude mean/std are saved to STORE/stats.json.
    """
    classify_inputs(paths, root)  # a wrong path fails here, before a cluster starts
    with dask_executor(workers if content else 0, scheduler if content else None) as executor, progress() as bar:
        task = None

        def start(description: str, total: int) -> None:
            nonlocal task
            task = bar.add_task(description, total=total, rate="")

        report = describe(paths, root=root, content=content, executor=executor,
                          progress=ProgressHooks(start, lambda: bar.update(task, advance=1)))
    if report["manifests"]:
        print_section("manifests", report["manifests"])
    for store in report["stores"]:
        print_section(f"store {store['path']}", store)
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(report, indent=1, sort_keys=True) + "\n").encode())
        console.print(f"wrote {json_out}")
    if plots is not None:
        from vr_data.stats.plots import write_plots

        written = write_plots(report, plots)
        console.print(f"wrote {len(written)} figures to {plots}")


def print_section(title: str, section: dict) -> None:
    """Every table of one section of the report."""
    console.rule(f"[bold]{title}")
    console.print(_libraries_table(section))
    if any("files" in row for row in section["libraries"]):  # stores keep no file records
        console.print(_files_table(section))
    for role, totals in section["roles"].items():
        console.print(f"{totals['days']:.2f} days of {role} = {totals['hours']:.3f} h: {totals['items']} items, "
                      f"{totals['frames']} frames, {totals['libraries']} libraries", highlight=False)
    if section.get("offsets") and section["offsets"]["pairs"]:
        offsets = section["offsets"]
        console.print(f"pair offsets: {offsets['pairs']} pairs, {len(offsets['nonzero'])} not aligned to the sample, "
                      f"{offsets['offset_ms']['min']:.2f} to {offsets['offset_ms']['max']:.2f} ms", highlight=False)
    content = section.get("content")
    if content:
        console.print(_content_table(content))
        vocal = content.get("pairs", {}).get("vocal_energy_db")
        if vocal and vocal["count"]:
            console.print(f"vocal energy (mixture - instrumental) re instrumental: mean {vocal['mean']:.1f} dB, "
                          f"std {vocal['std']:.1f}, {vocal['min']:.1f} to {vocal['max']:.1f} dB", highlight=False)
        for error in content.get("errors", []):
            console.print(f"[red]not measured[/] {error['library']}/{error['id']}: {error['error']}", highlight=False)
    if section.get("stats_json"):
        console.print(f"input normalisation (per-bin log-magnitude mean/std) saved to {section['stats_json']}")
    _print_integrity(section["integrity"])


def _libraries_table(section: dict) -> Table:
    table = Table(title="libraries")
    for column in ("library", "role", "items", "hours", "frames", "train", "valid", "groups", "rejects"):
        table.add_column(column, justify="right" if column in ("items", "hours", "frames", "groups") else "left",
                         no_wrap=column in ("library", "role"))
    for row in section["libraries"]:
        splits = row["splits"]
        table.add_row(
            row["library"], row["role"], str(row["items"]), f"{row['hours']:.3f}", str(row["frames"]),
            _split_cell(splits.get("train")), _split_cell(splits.get("valid")), str(row["groups"]),
            _counts_cell(row.get("rejects")),
        )
    return table


def _files_table(section: dict) -> Table:
    table = Table(title="files")
    for column in ("library", "files", "sample rates", "channels", "formats"):
        table.add_column(column, justify="right" if column == "files" else "left")
    for row in section["libraries"]:
        table.add_row(row["library"], str(row["files"]), _counts_cell(row["sample_rates"]),
                      _counts_cell(row["channels"]), _counts_cell(row["formats"]))
    return table


def _content_table(content: dict) -> Table:
    manifests = any("loudness_lufs" in summary for summary in content["sources"].values())
    table = Table(title="content: integrated loudness (BS.1770-4), peak, silence, clipping" if manifests
                  else "content: levels from the spectrograms")
    columns = (("source", "items", "LUFS mean+-std", "LUFS range", "peak max", "silence", "clipped (items)")
               if manifests else ("source", "tracks", "frames", "track RMS dBFS", "RMS range", "silent frames"))
    for column in columns:
        table.add_column(column, justify="left" if column == "source" else "right")
    for key, summary in content["sources"].items():
        if manifests:
            loudness, peak, silence = summary["loudness_lufs"], summary["peak_dbfs"], summary["silence_fraction"]
            table.add_row(
                key, str(summary["items"]), f"{_number(loudness['mean'])} +- {_number(loudness['std'])}",
                f"{_number(loudness['min'])}..{_number(loudness['max'])}", f"{_number(peak['max'])} dBFS",
                _percent(silence["of_duration"]), f"{summary['clipping']['samples']} ({summary['clipping']['items']})",
            )
        else:
            level = summary["track_rms_dbfs"]
            table.add_row(key, str(summary["tracks"]), str(summary["frames"]),
                          f"{_number(level['mean'])} +- {_number(level['std'])}",
                          f"{_number(level['min'])}..{_number(level['max'])}",
                          _percent(summary["silence_fraction"]["of_frames"]))
    return table


def _print_integrity(integrity: dict) -> None:
    duplicates = integrity.get("duplicates", [])
    leaks = integrity.get("group_leaks", [])
    if not duplicates and not leaks:
        checked = "no duplicate files, " if "duplicates" in integrity else ""  # stores keep no file hashes
        console.print(f"integrity: {checked}no group in both splits")
        return
    if duplicates:
        table = Table(title=f"duplicate files ({len(duplicates)})")
        for column in ("sha256", "kinds", "where"):
            table.add_column(column)
        for finding in duplicates:
            where = "\n".join(f"{o['library']} ({o['role']}, {o['split']}): {o['path']}" for o in finding["occurrences"])
            table.add_row(finding["sha256"][:12], ", ".join(finding["kinds"]), where)
        console.print(table)
    if leaks:
        table = Table(title=f"groups in both train and valid ({len(leaks)})")
        for column in ("role", "group", "train", "valid"):
            table.add_column(column)
        for finding in leaks:
            cells = ["\n".join(", ".join(m["paths"]) or m["id"] for m in finding["splits"].get(split, []))
                     for split in ("train", "valid")]
            table.add_row(finding["role"], finding["group"], *cells)
        console.print(table)


def _split_cell(split: dict | None) -> str:
    return f"{split['items']}: {split['hours']:.3f} h" if split else "0"


def _counts_cell(counts: dict | None) -> str:
    return ", ".join(f"{name}:{count}" for name, count in counts.items()) if counts else "-"


def _number(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f} %" if value is not None else "-"
