"""Statistics of libraries and stores: totals, content, integrity, input normalisation.

`describe(paths)` returns the `vrdata stats` report (docs/stats.md); `write_plots` draws it;
`load_normalisation(store, role)` gives the per-bin log-magnitude mean and std a trainer
standardises its input with. Modules: `totals` (from records), `content` (decoded audio of
manifests), `store_stats` (streamed spectra of stores), `integrity` (duplicates, group
leakage), `normalisation` (`STORE/stats.json`), `plots`, `report`.
"""

from vr_data.stats.normalisation import load_normalisation, read_store_stats
from vr_data.stats.report import Progress, classify_inputs, describe, load_inputs
from vr_data.stats.settings import StatsSettings

__all__ = ["Progress", "StatsSettings", "classify_inputs", "describe", "load_inputs", "load_normalisation", "read_store_stats"]
