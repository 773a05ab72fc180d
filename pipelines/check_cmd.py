"""`vrdata check`: content duplicates and split leaks of manifests, an exclusion list to act on,
and the pairs whose checks failed (by name).

A thin wrapper over `vr_data.quality.duplicates` (the fingerprints come from the manifests: no
audio is decoded). Leaks are printed first; `--fail-on-leak` exits 1 when there is one (CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipelines.common import EXIT_DAMAGE, console, humans_on_stderr, user_errors, write_json
from pipelines.quality_tables import print_content_duplicates, print_pair_checks
from pipelines.apps import vrdata_app as app
from vr_data.catalog.exclusions import write_exclusions
from vr_data.io import check_writable
from vr_data.quality.duplicates import content_duplicates, exclusions
from vr_data.quality.pair_report import pair_check_report
from vr_data.quality.search import MIN_SECONDS, MIN_VOTES


@app.command("check")
@user_errors
def check_command(
    paths: list[str] = typer.Argument(..., metavar="MANIFEST...", help="Manifests (M.jsonl or M.jsonl=ROOT)."),
    fail_on_leak: bool = typer.Option(False, "--fail-on-leak", help="Exit 1 when audio of one split is in another."),
    write_exclusions_to: Optional[Path] = typer.Option(
        None, "--write-exclusions", help="Write the items to leave out (leaks; duplicates too with "
        "--exclude-duplicates) for build-shards --exclude and scan --exclude."),
    exclude_duplicates: bool = typer.Option(False, help="List duplicates within a split in the exclusions too "
                                            "(all but the longest item of each role)."),
    min_votes: int = typer.Option(MIN_VOTES, min=2, help="Landmarks that must agree at one offset for a match."),
    min_seconds: int = typer.Option(MIN_SECONDS, min=0, help="Distinct seconds that must hold agreeing landmarks "
                                    "(at most half the shorter file's)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the findings as JSON ('-': stdout)."),
) -> None:
    """Find the same audio twice among MANIFESTs (re-encoded, resampled, trimmed, excerpted)."""
    from vr_data.stats.report import load_inputs

    for target in (write_exclusions_to, None if json_out in (None, "-") else Path(json_out)):
        if target is not None:
            check_writable(target)
    manifests, stores = load_inputs(paths)
    if stores:
        from vr_data.errors import VRDataError

        raise VRDataError(stores[0], "is a store; vrdata check reads manifests (stores keep no fingerprints)")
    with humans_on_stderr(json_out == "-"):
        with console.status("matching fingerprints"):
            findings = content_duplicates(manifests, min_votes=min_votes, min_seconds=min_seconds)
        print_content_duplicates(findings)
        pairs = pair_check_report(manifests)
        print_pair_checks(pairs)
        excluded = exclusions(findings, duplicates=exclude_duplicates)
        if write_exclusions_to is not None:
            write_exclusions(write_exclusions_to, excluded)
            console.print(f"wrote {len(excluded)} exclusions to {write_exclusions_to}", highlight=False)
    if json_out is not None:
        write_json(json_out, {**findings, "exclusions": [e.to_json() for e in excluded], "pair_checks": pairs})
    if fail_on_leak and findings["leaks"]:
        raise typer.Exit(EXIT_DAMAGE)
