"""The data-quality tables that `vrdata check` and `vrdata stats` print: content duplicates and
leaks (leaks first), and the worst pairs per pair-check measure (docs/stats.md)."""

from __future__ import annotations

from rich.table import Table

from pipelines.common import console


def print_content_duplicates(findings: dict) -> None:
    """Leaks first, then duplicate groups: one table row per file, with its match."""
    groups = findings["groups"]
    if findings["files_without_fingerprint"]:
        console.print(f"[yellow]warning:[/] {findings['files_without_fingerprint']} files have no fingerprint "
                      "(rescan with vrdata scan to add them)", highlight=False)
    if findings.get("files_with_outdated_fingerprint"):
        console.print(f"[yellow]warning:[/] {findings['files_with_outdated_fingerprint']} files have an outdated "
                      f"fingerprint, not compared (this version reads {findings['fingerprint_version']}; rescan with "
                      "vrdata scan to recompute them)", highlight=False)
    if not groups:
        console.print(f"content: no duplicate or leaked audio among {findings['files']} fingerprinted files",
                      highlight=False)
        return
    leaks = [group for group in groups if group["leak"]]
    for title, chosen in ((f"LEAKS: the same audio in two splits ({len(leaks)})", leaks),
                          (f"content duplicates within a split ({len(groups) - len(leaks)})",
                           [group for group in groups if not group["leak"]])):
        if not chosen:
            continue
        table = Table(title=title)
        for header in ("#", "split", "library/path", "matched"):
            table.add_column(header, overflow="fold", justify="right" if header == "#" else "left")
        for number, group in enumerate(chosen, start=1):
            for index, ref in enumerate(group["files"]):
                table.add_row(str(number) if index == 0 else "", ref["split"], f"{ref['library']}/{ref['path']}",
                              _match_cell(group, index))
            table.add_section()
        console.print(table)


def print_pair_checks(report: dict) -> None:
    """Flag counts, then the worst pairs of each measure by name (docs/stats.md, pair checks)."""
    if not report["checked"]:
        return
    counts = ", ".join(f"{flag} {count}" for flag, count in report["flags"].items()) or "none"
    console.print(f"pair checks: {report['checked']} of {report['pairs']} pairs measured; flagged: {counts}",
                  highlight=False)
    if not report["flags"]:
        return
    table = Table(title="worst pairs per measure")
    for header in ("measure", "value", "library/id", "flags"):
        table.add_column(header, overflow="fold", justify="right" if header == "value" else "left")
    for measure, rows in report["worst"].items():
        for index, row in enumerate(rows[:3]):
            table.add_row(measure if index == 0 else "", f"{row['value']:g}", f"{row['library']}/{row['id']}",
                          ", ".join(row["flags"]) or "-")
        if rows:
            table.add_section()
    console.print(table)


def _match_cell(group: dict, index: int) -> str:
    """`1: 31.2 s at +1.25 s` (the strongest match of file `index`, to the file numbered 1-based)."""
    edges = [e for e in group["matches"] if index in (e["a"], e["b"])]
    if not edges:
        return ""
    edge = max(edges, key=lambda e: e["votes"])
    other = edge["b"] if edge["a"] == index else edge["a"]
    offset = edge["offset_seconds"] if edge["a"] == index else -edge["offset_seconds"]
    return f"file {other + 1}: {edge['matched_seconds']:g} s at {offset:+g} s"
