"""`vrdata scan`, `vrdata verify-manifest`, `vrdata demo-corpus`: thin wrappers over vr_data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipelines.common import (
    EXIT_DAMAGE, console, dask_executor, default_workers, humans_on_stderr, parse_manifest_spec, progress,
    user_errors, write_json,
)
from pipelines.apps import vrdata_app as app
from vr_data.errors import ConfigError, VRDataError
from vr_data.catalog.exclusions import read_exclusions
from vr_data.catalog.layouts import LAYOUTS
from vr_data.catalog.manifest import SPLITS, read_manifest, rejects_path, write_manifest, write_rejects
from vr_data.catalog.scan import (
    ScanJournal, ScanOptions, hours_by_split, journal_path, previous_manifest, scan, verify_manifest,
)
from vr_data.io import check_writable, exclusive_lock


@app.command("scan")
@user_errors
def scan_command(
    root: Path = typer.Argument(..., help="Library root folder."),
    layout: str = typer.Option(..., "--layout", help=f"Folder layout: {', '.join(LAYOUTS)}."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (M.jsonl; rejects go to M.rejects.jsonl)."),
    library: str = typer.Option("", help="Library name (default: the root folder's name)."),
    valid_fraction: float = typer.Option(0.1, help="Fraction of groups (or items) in the valid split."),
    group_by: str = typer.Option("none", help="none | artist ('Artist - Title') | folder | regex:PATTERN."),
    pair_pattern: Optional[str] = typer.Option(None, help="Regex with a (?P<key>...) group matching pair names."),
    min_seconds: float = typer.Option(1.0, help="Refuse files shorter than this."),
    silence_dbfs: float = typer.Option(-60.0, help="Refuse files whose peak is at or below this level "
                                       "(-inf: keep silent files). Judged on the mixture and the summed "
                                       "instrumental, never on one stem."),
    downmix: bool = typer.Option(False, help="Fold files with more than 2 channels to stereo instead of refusing."),
    length_tolerance: float = typer.Option(0.5, help="Pairs: largest mixture/instrumental length difference, s."),
    max_offset_ms: float = typer.Option(5.0, help="Pairs: largest mixture/instrumental time offset, ms."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="Exclusion list (vrdata check "
                                           "--write-exclusions): its items are rejected as leak/duplicate."),
    pair_checks: str = typer.Option("report", help="Pairs: report (flags in the manifest and stats) or strict "
                                    "(reject flagged pairs as pair_check; docs/stats.md)."),
    fingerprint: bool = typer.Option(True, help="Store a content fingerprint per file (duplicates and leaks by "
                                     "content: vrdata check, vrdata stats)."),
    workers: int = typer.Option(default_workers(), min=0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler to use instead."),
    rescan: bool = typer.Option(True, help="Reuse unchanged files (size+mtime) of an existing --out manifest."),
    force: bool = typer.Option(False, help="Replace an --out that holds another library's manifest (or no manifest)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write a JSON summary to this file ('-': stdout)."),
) -> None:
    """Scan ROOT into a portable manifest (incremental, parallel, resumable)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(None, f"--valid-fraction must be in [0, 1), not {valid_fraction:g}")
    options = ScanOptions(
        layout=layout, library=library, valid_fraction=valid_fraction, group_by=group_by,
        pair_pattern=pair_pattern, min_seconds=min_seconds, silence_dbfs=silence_dbfs, downmix=downmix,
        length_tolerance=length_tolerance, max_offset_ms=max_offset_ms, fingerprint=fingerprint, pair_checks=pair_checks,
    )
    root = root.resolve() if root.is_dir() else root
    if not root.is_dir():
        raise VRDataError(root, "dataset root is not a directory")
    check_writable(out)
    exclusions = read_exclusions(exclude) if exclude is not None else None
    if json_out not in (None, "-"):
        check_writable(json_out)
    with humans_on_stderr(json_out == "-"), \
            exclusive_lock(out.with_name(f".{out.name}.lock"), "vrdata scan", subject=out):
        previous = previous_manifest(out, root, options, force)
        journal = ScanJournal(journal_path(out))
        with dask_executor(workers, scheduler) as executor, progress() as bar:
            task = None
            seconds = 0.0

            def on_start(candidates: int) -> None:
                nonlocal task
                task = bar.add_task(f"scan {root.name}", total=candidates, rate="")

            def on_item(item, rejects):
                nonlocal seconds
                seconds += item.duration if item is not None else 0.0
                bar.update(task, advance=1, rate=f"{seconds / 3600:.2f} h")

            result = scan(root, options, executor=executor, previous=previous if rescan else None,
                          on_item=on_item, on_start=on_start, journal=journal, exclusions=exclusions)
        write_manifest(out, result.manifest)
        write_rejects(rejects_path(out), result.rejects)
        journal.remove()  # the manifest holds it all now
        print_scan_summary(result, out)
    if json_out is not None:
        write_json(json_out, {**result.to_json(), "manifest": str(out), "rejects_file": str(rejects_path(out))})


def print_scan_summary(result, out: Path) -> None:
    """The summary table (items, hours, hours per split, hashed/reused, rejects), the rejects by
    reason with an example each, and any warning."""
    manifest = result.manifest
    splits = hours_by_split(manifest)
    table = Table(title=f"{manifest.library} ({manifest.role}, layout {manifest.layout})")
    for column in ("items", "hours", *(f"{split} h" for split in SPLITS), "hashed", "reused", "rejects"):
        table.add_column(column, justify="right")
    table.add_row(
        str(len(manifest.items)), f"{manifest.hours:.3f}", *(f"{splits.get(split, 0):.3f}" for split in SPLITS),
        str(result.hashed), str(result.reused), str(len(result.rejects)),
    )
    console.print(table)
    if result.resumed:
        console.print(f"resumed an interrupted scan: {result.resumed} candidates were already done", highlight=False)
    if result.rejects:
        reasons = Table(title="rejects by reason")
        reasons.add_column("reason", no_wrap=True)
        reasons.add_column("count", justify="right", no_wrap=True)
        reasons.add_column("example", overflow="fold")
        examples = {}
        for reject in result.rejects:
            examples.setdefault(reject.code, f"{reject.path}: {reject.reason}")
        for code, count in sorted(Counter(r.code for r in result.rejects).items()):
            reasons.add_row(code, str(count), examples[code])
        console.print(reasons)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    console.print(f"wrote {out} and {rejects_path(out).name}", highlight=False)


@app.command("verify-manifest")
@user_errors
def verify_manifest_command(
    manifest_spec: str = typer.Argument(..., metavar="MANIFEST", help="Manifest to check (M.jsonl or M.jsonl=ROOT)."),
    root: Optional[Path] = typer.Option(None, help="Where the files are on this machine (default: the header's root)."),
    workers: int = typer.Option(0, min=0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler."),
) -> None:
    """Re-hash every file of a manifest; exit 1 if any is missing or changed."""
    manifest_path, root = parse_manifest_spec(manifest_spec, root)
    manifest = read_manifest(manifest_path, root=root)
    if not manifest.root.is_dir():
        raise VRDataError(manifest.root, "root does not exist on this machine; pass --root")
    total = len({e.path for item in manifest.items for e in item.files.values()})
    with dask_executor(workers, scheduler) as executor, progress() as bar:
        task = bar.add_task("verify", total=total, rate="")
        problems = verify_manifest(manifest, executor, on_file=lambda _: bar.update(task, advance=1))
    for problem in problems:
        console.print(f"[red]{problem.code}[/] {problem.path}: {problem.reason}", highlight=False)
    if problems:
        console.print(f"{len(problems)} of {total} files damaged or missing")
        raise typer.Exit(EXIT_DAMAGE)
    console.print(f"all {total} files match {manifest_path.name}")


@app.command("demo-corpus")
@user_errors
def demo_corpus_command(
    directory: Path = typer.Argument(..., help="Folder to write the demo corpus into."),
    seconds: float = typer.Option(20.0, help="Length of each pair, seconds (others scale with it)."),
    seed: int = typer.Option(2026, help="Random seed; the corpus is a pure function of it."),
) -> None:
    """Write a small synthetic corpus: pairs, vocals, instrumentals and pretraining audio."""
    from vr_data.testing.demo import write_demo_corpus

    if not seconds > 0:
        raise ConfigError(None, f"--seconds must be > 0, not {seconds:g}")
    if directory.exists() and not directory.is_dir():
        raise VRDataError(directory, "exists and is not a directory; give a folder for the demo corpus")

    with console.status("synthesising demo corpus"):
        roots = write_demo_corpus(directory, seconds=seconds, seed=seed)
    for layout, root in roots.items():
        count = sum(1 for p in root.rglob("*") if p.is_file())
        console.print(f"{layout:14s} {root}  ({count} files)")
