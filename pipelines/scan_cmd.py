"""`vrdata scan`, `vrdata verify-manifest`, `vrdata demo-corpus`: thin wrappers over vr_data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipelines.common import console, dask_executor, default_workers, progress, user_errors
from pipelines.vrdata import app
from vr_data.errors import VRDataError
from vr_data.catalog.layouts import LAYOUTS
from vr_data.catalog.manifest import read_manifest, rejects_path, write_manifest, write_rejects
from vr_data.catalog.scan import ScanOptions, hours_by_split, scan, verify_manifest


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
    silence_dbfs: float = typer.Option(-60.0, help="Refuse files whose peak is at or below this level."),
    downmix: bool = typer.Option(False, help="Fold files with more than 2 channels to stereo instead of refusing."),
    length_tolerance: float = typer.Option(0.5, help="Pairs: largest mixture/instrumental length difference, s."),
    max_offset_ms: float = typer.Option(5.0, help="Pairs: largest mixture/instrumental time offset, ms."),
    workers: int = typer.Option(default_workers(), help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler to use instead."),
    rescan: bool = typer.Option(True, help="Reuse unchanged files (size+mtime) of an existing --out manifest."),
) -> None:
    """Scan ROOT into a portable manifest (incremental, parallel)."""
    if layout not in LAYOUTS:
        raise typer.BadParameter(f"--layout must be one of {', '.join(LAYOUTS)}")
    options = ScanOptions(
        layout=layout, library=library, valid_fraction=valid_fraction, group_by=group_by,
        pair_pattern=pair_pattern, min_seconds=min_seconds, silence_dbfs=silence_dbfs, downmix=downmix,
        length_tolerance=length_tolerance, max_offset_ms=max_offset_ms,
    )
    previous = None
    if rescan and out.exists():
        try:
            previous = read_manifest(out, root=root.resolve())
        except VRDataError as error:
            console.print(f"[yellow]not reusing {out}:[/] {error.reason}")
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

        result = scan(root, options, executor=executor, previous=previous, on_item=on_item, on_start=on_start)
    write_manifest(out, result.manifest)
    write_rejects(rejects_path(out), result.rejects)
    _print_summary(result, out)


def _print_summary(result, out: Path) -> None:
    manifest = result.manifest
    splits = hours_by_split(manifest)
    table = Table(title=f"{manifest.library} ({manifest.role}, layout {manifest.layout})")
    table.add_column("items", justify="right")
    table.add_column("hours", justify="right")
    table.add_column("train h", justify="right")
    table.add_column("valid h", justify="right")
    table.add_column("hashed", justify="right")
    table.add_column("reused", justify="right")
    table.add_column("rejects", justify="right")
    table.add_row(
        str(len(manifest.items)), f"{manifest.hours:.3f}", f"{splits.get('train', 0):.3f}",
        f"{splits.get('valid', 0):.3f}", str(result.hashed), str(result.reused), str(len(result.rejects)),
    )
    console.print(table)
    if result.rejects:
        reasons = Table(title="rejects by reason")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        reasons.add_column("example")
        examples = {}
        for reject in result.rejects:
            examples.setdefault(reject.code, f"{reject.path}: {reject.reason}")
        for code, count in sorted(Counter(r.code for r in result.rejects).items()):
            reasons.add_row(code, str(count), examples[code])
        console.print(reasons)
    console.print(f"wrote {out} and {rejects_path(out).name}")


@app.command("verify-manifest")
@user_errors
def verify_manifest_command(
    manifest_path: Path = typer.Argument(..., help="Manifest to check."),
    root: Optional[Path] = typer.Option(None, help="Where the files are on this machine (default: the header's root)."),
    workers: int = typer.Option(0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler."),
) -> None:
    """Re-hash every file of a manifest; exit 1 if any is missing or changed."""
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
        raise typer.Exit(1)
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

    with console.status("synthesising demo corpus"):
        roots = write_demo_corpus(directory, seconds=seconds, seed=seed)
    for layout, root in roots.items():
        count = sum(1 for p in root.rglob("*") if p.is_file())
        console.print(f"{layout:14s} {root}  ({count} files)")
