"""Spectrogram stores: sharded Zarr v3 arrays plus WebDataset tars (layout: docs/store.md).

Reading: `open_store` / `Store` (`reader`). Writing: `build` (plan, per-track tasks, finalise),
with `plan`, `arrays` (Zarr through tensorstore), `wds` (tar shards), `codec` (float16 storage)
and `format` (names and records shared by writers and readers); `verify` checks a finished
store; `normalisation` is the `stats.json` beside it. Importing the package imports the reader
only, not the builder.
"""

from vr_data.store.reader import FrameRequest, Store, iter_wds_samples, open_store

__all__ = ["FrameRequest", "Store", "iter_wds_samples", "open_store"]
