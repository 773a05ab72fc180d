"""The pair checks of manifests by name: flag counts and the worst pairs of each measure.

Reads what scan stored in each pair's `checks` (vr_data.dsp.pairs): nothing is decoded. For
each measure the `top` pairs furthest beyond the good side are listed with their library, id
and value, so a bad pair is found by name, not only as the end of a range.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vr_data.catalog.manifest import Manifest

# measure -> how "worse" sorts: +1 larger is worse, -1 smaller is worse, 0 larger |value| is worse
MEASURES = {
    "offset_ms": 0, "gain_db": 0, "residual_db": 1, "instrumental_over_mixture_db": 1, "correlation": -1,
    "clipped_fraction": 1, "residual_bleed": 1,
}


def pair_check_report(manifests: Iterable[Manifest], top: int = 5) -> dict:
    """`{"pairs", "checked", "flags": {flag: count}, "worst": {measure: [rows]}}` (docs/stats.md)."""
    rows, flags, pairs = [], Counter(), 0
    for manifest in manifests:
        if manifest.role != "pair":
            continue
        for item in manifest.items:
            pairs += 1
            checks = item.checks
            if "flags" not in checks:
                continue  # scanned before pair checks existed: rescan to measure
            flags.update(checks["flags"])
            values = dict(checks)
            values["offset_ms"] = round(checks.get("offset_samples", 0) / checks.get("offset_sample_rate", 44100)
                                        * 1000, 3)
            rows.append((manifest.library, item.id, item.split, values))
    worst = {}
    for measure, direction in MEASURES.items():
        present = [(library, identifier, split, values) for library, identifier, split, values in rows
                   if isinstance(values.get(measure), (int, float))]
        key = {1: lambda r: -r[3][measure], -1: lambda r: r[3][measure], 0: lambda r: -abs(r[3][measure])}[direction]
        worst[measure] = [{"library": library, "id": identifier, "split": split, "value": values[measure],
                           "flags": values["flags"]} for library, identifier, split, values in sorted(present, key=key)[:top]]
    return {"pairs": pairs, "checked": len(rows), "flags": dict(sorted(flags.items())), "worst": worst}
