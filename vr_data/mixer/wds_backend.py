"""The mixer's sequential backend: streams of crops from the store's WebDataset tar shards.

Each example kind reads its own stream: the kind's shards (of the chosen split), shuffled per
epoch and dealt out to `world_size x num_workers` stream slots. A slot reads `interleave` of its
shards at once, taking each next crop from a randomly chosen one of them, and passes the crops
through a shuffle buffer of `buffer_size`: with one tar per track, interleaving is what puts
several tracks in one batch (one tar at a time and a 16-crop buffer gave batches of 1-2 tracks).
Within a tar, each run of a track's consecutive segments is tiled into crops at a random phase,
as the Zarr backend tiles a track (`sampling.crop_cells`), so crop starts vary from epoch to
epoch and are not tied to segment boundaries.

The example kinds and each example's random choices (swaps, gains, mono...) come from the same
epoch plan and example streams as in the Zarr backend, and the batch format is the same. The
crops are not: they come from the streams, not from the plan's crop cells, so the two backends
give different batches for the same config, and this backend's crops depend on the number of
DataLoader workers as well.

Batch `k` of a rank is made by stream slot `k % num_workers`, so a DataLoader worker's streams
are a pure function of (seed, epoch, rank, slot, num_workers). Resuming at batch `k0` replays
each slot's streams up to `k0` (reading, not mixing), so the next batches equal those of an
uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vr_data.errors import VRDataError
from vr_data.mixer.base import MixerBase
from vr_data.mixer.config import CropBuffers, Recipe
from vr_data.mixer.sampling import KINDS, example_rng
from vr_data.store.wds import iter_tar_samples, wds_member_path

_STREAM_SALT = {"pair": 1, "augmented": 2, "pretrain": 3, "vocal": 4}

# (source -> float16 (crop_frames, 2, 2, bins), valid frames, track id)
Crop = tuple[dict[str, np.ndarray], int, str]


class _Run:
    """Consecutive segments of one track in one tar, tiled into crops at `phase` as they arrive.

    Cells are those of `sampling.crop_cells` for a track of the run's length: the grid `phase +
    n x crop` inside the run, a head cell at 0 when `phase > 0`, a tail cell ending at the run's
    end when the grid leaves frames over; a run no longer than a crop is one (padded) crop. Only
    the frames still needed are kept (at most about a crop and a segment).
    """

    def __init__(self, track: str, crop_frames: int, phase: int, sources: tuple[str, ...]):
        self.track, self.crop, self.sources = track, crop_frames, sources
        self.segments: list[tuple[int, dict[str, np.ndarray]]] = []  # (first frame, valid frames per source)
        self.frames = 0
        self.grid_start = phase           # next grid cell
        self.head = phase > 0             # the cell at 0 is still to come

    def add(self, arrays: dict[str, np.ndarray], valid: int) -> Iterator[Crop]:
        self.segments.append((self.frames, arrays))
        self.frames += valid
        if self.frames <= self.crop:      # not yet known to be longer than a crop
            return
        if self.head:
            self.head = False
            yield self._cut(0)
        while self.grid_start + self.crop <= self.frames:
            yield self._cut(self.grid_start)
            self.grid_start += self.crop
        keep_from = min(self.grid_start, self.frames - self.crop)  # a tail cell may need the last crop
        while len(self.segments) > 1 and self.segments[1][0] <= keep_from:
            self.segments.pop(0)

    def finish(self) -> Iterator[Crop]:
        if self.frames == 0:
            return
        if self.frames <= self.crop:
            yield self._cut(0)
        elif self.grid_start < self.frames:
            yield self._cut(self.frames - self.crop)

    def _cut(self, start: int) -> Crop:
        take = min(self.crop, self.frames - start)
        crops = {}
        for source in self.sources:
            first = self.segments[0][1][source]
            crop = np.zeros((self.crop,) + first.shape[1:], np.float16)
            for offset, arrays in self.segments:
                values = arrays[source]
                lo, hi = max(start, offset), min(start + take, offset + values.shape[0])
                if lo < hi:
                    crop[lo - start: hi - start] = values[lo - offset: hi - offset]
            crops[source] = crop
        return crops, take, self.track


class CropStream:
    """Endless crops `(sources -> float16 (crop_frames, 2, 2, bins), valid_frames, track)` from tars:
    `interleave` tars read at once (each next crop from a random one of them), through a shuffle
    buffer of `buffer_size` crops. Tars are taken in a fresh random order after every pass; a tar
    is never open twice at once."""

    def __init__(self, wds_dir: Path, shards: list[str], sources: tuple[str, ...], crop_frames: int,
                 rng: np.random.Generator, buffer_size: int, interleave: int = 16):
        if not shards:
            raise VRDataError(wds_dir, "no WebDataset shards for this stream")
        self.wds_dir = wds_dir
        self.shards = shards
        self.sources = sources
        self.crop_frames = crop_frames
        self.rng = rng
        self.buffer_size = max(1, buffer_size)
        self.interleave = max(1, min(interleave, len(shards)))
        self._queue: list[int] = []
        self._open: list[tuple[int, Iterator[Crop]]] = []
        self._buffer: list[Crop] = []

    def next(self) -> Crop:
        while len(self._buffer) < self.buffer_size:
            self._buffer.append(self._next_crop())
        position = int(self.rng.integers(0, len(self._buffer)))
        crop = self._buffer[position]
        self._buffer[position] = self._buffer[-1]
        self._buffer.pop()
        return crop

    def _next_crop(self) -> Crop:
        while True:
            while len(self._open) < self.interleave:
                shard = self._next_shard()
                self._open.append((shard, self._crops_of(self.wds_dir / self.shards[shard])))
            position = int(self.rng.integers(0, len(self._open)))
            try:
                return next(self._open[position][1])
            except StopIteration:
                self._open.pop(position)

    def _next_shard(self) -> int:
        """The next tar of the shuffled order that is not open now."""
        busy = {shard for shard, _ in self._open}
        while True:
            if not self._queue:
                self._queue = [int(i) for i in self.rng.permutation(len(self.shards))]
            for position, shard in enumerate(self._queue):
                if shard not in busy:
                    return self._queue.pop(position)
            self._queue = []  # every queued tar is open: start the next pass

    def _crops_of(self, tar: Path) -> Iterator[Crop]:
        run: _Run | None = None
        for sample in iter_tar_samples(tar):
            meta = sample.get("json")
            missing = [s for s in self.sources if s not in sample]
            if meta is None or missing:
                raise VRDataError(tar, f"sample {sample['__key__']} lacks {missing or ['json']}")
            valid = int(meta["frames"])
            if run is not None and run.track != meta["track"]:
                yield from run.finish()
                run = None
            if run is None:
                run = _Run(meta["track"], self.crop_frames, int(self.rng.integers(0, self.crop_frames)), self.sources)
            yield from run.add({source: sample[source][:valid] for source in self.sources}, valid)
            if valid < sample[self.sources[0]].shape[0]:  # a zero-padded segment ends its track
                yield from run.finish()
                run = None
        if run is not None:
            yield from run.finish()


class WdsMixerDataset(MixerBase):
    """Sequential streaming from the WebDataset shards: per kind and slot, `interleave` tars read
    at once and a shuffle buffer of `buffer_size` crops (memory: about `interleave + buffer_size`
    crops per stream, each `crop_frames x 8 x bins` bytes per source).

    Its crops depend on the world size and the number of workers (the stream slots), so a resume
    must keep both (`topology_free = False`)."""

    topology_free = False

    def __init__(self, store_path: str | Path, config, rank: int | None = None, world_size: int | None = None,
                 buffer_size: int = 16, interleave: int = 16, step_examples: int | None = None):
        super().__init__(store_path, config, rank, world_size, step_examples)
        if not self.store.geometry.wds:
            raise VRDataError(self.store_path, "store was built without WebDataset tars (--no-wds); "
                                               "use ZarrMixerDataset, or rebuild with --wds")
        if config.proportions.get("pretrain", 0) > 0 and tuple(config.pretrain_sources) != ("pretrain",):
            # A stream reads one set of sources from every sample; other roles' tars hold others.
            raise VRDataError(self.store_path, "pretrain_sources beyond 'pretrain' need the zarr backend")
        self.buffer_size = buffer_size
        self.interleave = interleave
        self.wds_dir = self.store_path / "wds"
        self._check_shard_paths()
        self._example_tracks: dict[int, list[str]] = {}  # example index -> track ids it read (records)

    def _check_shard_paths(self) -> None:
        """Every tar a stream may open must lie inside `wds/`: a path edited into tracks.jsonl
        (absolute, `..`, a symlink out) is refused, as `verify` and `iter_wds_samples` refuse it."""
        for library in self.libraries.values():
            for track, _ in library.entries:
                for shard in track.wds_shards:
                    try:
                        wds_member_path(self.wds_dir, shard)
                    except VRDataError as error:
                        raise VRDataError(self.store_path / "tracks.jsonl", f"track {track.id}: WebDataset shard "
                                                                          f"{shard!r}: {error.reason}") from None

    def _shards(self, kind: str) -> tuple[list[str], tuple[str, ...]]:
        library = self.libraries["vocal" if kind == "vocal" else kind]
        sources = {source for _, source in library.entries}
        shards = sorted({shard for track, _ in library.entries for shard in track.wds_shards})
        return shards, tuple(sorted(sources)) if kind != "pair" else ("mixture", "instrumental")

    def _stream(self, kind: str, epoch: int, slot: int, num_workers: int) -> CropStream:
        shards, sources = self._shards(kind)
        slots = self.world_size * num_workers
        global_slot = self.rank * num_workers + slot
        order = np.random.default_rng([self.config.seed, epoch, _STREAM_SALT[kind]]).permutation(len(shards))
        shuffled = [shards[int(i)] for i in order]
        # Enough shards: each slot its own share; fewer than slots: every slot reads them all (in
        # its own order and phases), so slots may meet the same crops (docs/mixer.md).
        mine = shuffled[global_slot::slots] if len(shuffled) >= slots else shuffled
        rng = np.random.default_rng([self.config.seed, epoch, _STREAM_SALT[kind], global_slot, slots])
        return CropStream(self.wds_dir, mine, sources, self.config.crop_frames, rng, self.buffer_size, self.interleave)

    def __iter__(self):
        """Endless batches from (epoch, start_batch) on. Batch n of the endless sequence is made by
        stream slot n % W; the streams of (epoch, slot) are replayed (read, not mixed) up to the
        start position, so a resumed run continues exactly."""
        worker, num_workers = self.worker()
        per_epoch = self.batches_per_rank()
        start = self.epoch * per_epoch + self.start_batch
        slot = (start + worker) % num_workers
        buffers = self.new_buffers()
        epoch = self.epoch
        while True:
            plan = self.plan(epoch)
            needed = {KINDS[int(k)] for k in np.unique(plan.kinds)}
            if "augmented" in needed and self.libraries["vocal"].entries:
                needed.add("vocal")
            streams = {kind: self._stream(kind, epoch, slot, num_workers) for kind in needed}
            for k in range(per_epoch):
                position = epoch * per_epoch + k
                if position % num_workers != slot:
                    continue
                indices = list(plan.example_indices(self.rank, k))
                recipes = [self._make_example(j, i, plan, streams, buffers) for j, i in enumerate(indices)]
                if position >= start:
                    yield self.finish_batch(buffers, recipes, indices, epoch, k)
            epoch += 1

    def _make_example(self, j: int, index: int, plan, streams, buffers: CropBuffers) -> Recipe:
        kind = KINDS[int(plan.kinds[index])]
        rng = example_rng(self.config.seed, plan.epoch, index)
        recipe = self.draw_recipe(rng, kind)
        main, instrumental, vocal = buffers.main[j], buffers.instrumental[j], buffers.vocal[j]
        if kind == "pair":
            crops, valid, track = self._draw(streams["pair"], recipe, "instrumental")
            main[...], instrumental[...] = crops["mixture"], crops["instrumental"]
            if recipe.instrumental_only:
                main[...] = instrumental
            recipe.target_is_main, recipe.valid = recipe.instrumental_only, valid
        else:
            crops, valid, track = self._draw(streams[kind], recipe)
            main[...] = next(iter(crops.values())) if kind == "pretrain" else crops["instrumental"]
            recipe.target_is_main, recipe.valid = True, valid
            if recipe.has_vocal:
                vocal_crops, _, vocal_track = self._draw(streams["vocal"], recipe)
                vocal[...] = vocal_crops["vocal"]
                vocal[valid:] = 0  # padding past the instrumental stays silent
                track = [*track, *vocal_track]
        if self.records:
            if len(self._example_tracks) > 4 * len(buffers.main):
                self._example_tracks.clear()
            self._example_tracks[index] = list(track)
        return recipe

    def example_record(self, recipe: Recipe, index: int) -> dict:
        """As `MixerBase.example_record`, but a stream does not say where in its track a crop
        starts: `frames` and `sources` are empty here."""
        record = {"index": int(index), "kind": recipe.kind, "tracks": self._example_tracks.get(int(index), []),
                  "sources": [], "frames": [], "valid": int(recipe.valid),
                  "gains": [round(float(g), 6) for g in recipe.vocal_gain] if recipe.has_vocal else []}
        record.update(swap=[bool(recipe.swap_main), bool(recipe.swap_vocal)], mono=bool(recipe.mono),
                      instrumental_only=bool(recipe.instrumental_only))
        return record

    def _draw(self, stream: CropStream, recipe: Recipe, check: str | None = None):
        """Next crop of a stream, applying the silence rule to source `check` (default: the first)."""
        crops, valid, track = stream.next()
        rule = self.config.silence_rule
        source = check or next(iter(crops))
        attempts = 0
        while rule != "keep" and self.is_silent(crops[source]):
            recipe.silent += 1
            if rule == "count" or attempts >= self.config.max_resamples:
                break
            crops, valid, track = stream.next()
            attempts += 1
        return crops, valid, [track]
