"""Statistics of libraries and stores: totals, content, integrity, input normalisation.

`vr_data.stats.report.describe(paths)` returns the `vrdata stats` report (docs/stats.md);
`vr_data.stats.plots.write_plots` draws it. Modules: `totals` (from records), `content` (decoded
audio of manifests), `store_stats` (streamed spectra of stores), `integrity` (duplicates, group
leakage), `running` (mergeable moments and histograms), `settings`, `report`, `plots`. The
per-bin normalisation a trainer uses lives with the store (`vr_data.store.normalisation`).
Importing the package imports none of them.
"""

from importlib import import_module

# Public names, resolved on first use (PEP 562) so that importing the package stays light: the
# mixer's DataLoader workers and the trainer must not pay for the report's imports.
_LAZY = {
    "describe": "vr_data.stats.report",
    "classify_inputs": "vr_data.stats.report",
    "load_inputs": "vr_data.stats.report",
    "ProgressHooks": "vr_data.stats.report",
    "StatsSettings": "vr_data.stats.settings",
    "load_normalisation": "vr_data.store.normalisation",
    "read_store_stats": "vr_data.store.normalisation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vr_data.stats' has no attribute {name!r}")
