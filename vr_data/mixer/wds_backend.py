"""The mixer's sequential backend: streams of crops from the store's WebDataset tar shards.

Each example kind reads its own stream: the kind's shards (of the chosen split), shuffled per
epoch, dealt out to `world_size x num_workers` stream slots, read in order, cut into crops
(consecutive segments of a track are joined when a crop is longer than a segment) and passed
through a shuffle buffer. Batches have the same structure, recipes and normalisation as the Zarr
backend (the example kinds and random choices come from the same epoch plan); only the crops
come from the streams instead of random cells.

Batch `k` of a rank is made by stream slot `k % num_workers`, so a DataLoader worker's streams
are a pure function of (seed, epoch, rank, slot, num_workers). Resuming at batch `k0` replays
each slot's streams up to `k0` (reading, not mixing), so the next batches equal those of an
uninterrupted run. Unlike the Zarr backend, the crops depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vr_data.errors import VRDataError
from vr_data.mixer.base import MixerBase
from vr_data.mixer.config import CropBuffers, Recipe
from vr_data.mixer.sampling import KINDS, example_rng
from vr_data.store.wds import iter_tar_samples

_STREAM_SALT = {"pair": 1, "augmented": 2, "pretrain": 3, "vocal": 4}


class CropStream:
    """Endless crops `(sources -> float16 (crop_frames, 2, 2, bins), valid_frames)` from tars."""

    def __init__(self, wds_dir: Path, shards: list[str], sources: tuple[str, ...], crop_frames: int,
                 rng: np.random.Generator, buffer_size: int):
        if not shards:
            raise VRDataError(wds_dir, "no WebDataset shards for this stream")
        self.wds_dir = wds_dir
        self.shards = shards
        self.sources = sources
        self.crop_frames = crop_frames
        self.rng = rng
        self.buffer_size = max(1, buffer_size)
        self._crops = self._crops_forever()
        self._buffer: list = []

    def next(self) -> tuple[dict[str, np.ndarray], int]:
        while len(self._buffer) < self.buffer_size:
            self._buffer.append(next(self._crops))
        position = int(self.rng.integers(0, len(self._buffer)))
        crop = self._buffer[position]
        self._buffer[position] = self._buffer[-1]
        self._buffer.pop()
        return crop

    def _crops_forever(self) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        while True:
            for shard in self.rng.permutation(len(self.shards)):
                yield from self._crops_of(self.wds_dir / self.shards[int(shard)])

    def _crops_of(self, tar: Path) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        run: list[dict] = []
        run_frames = 0
        for sample in iter_tar_samples(tar):
            meta = sample.get("json")
            missing = [s for s in self.sources if s not in sample]
            if meta is None or missing:
                raise VRDataError(tar, f"sample {sample['__key__']} lacks {missing or ['json']}")
            if run and run[-1]["json"]["track"] != meta["track"]:
                yield self._cut(run, run_frames)
                run, run_frames = [], 0
            run.append(sample)
            run_frames += int(meta["frames"])
            if run_frames >= self.crop_frames or int(meta["frames"]) < sample[self.sources[0]].shape[0]:
                yield self._cut(run, run_frames)
                run, run_frames = [], 0
        if run:
            yield self._cut(run, run_frames)

    def _cut(self, run: list[dict], valid: int) -> tuple[dict[str, np.ndarray], int]:
        """A crop from a run of consecutive segments of one track, at a random offset."""
        offset = int(self.rng.integers(0, max(valid - self.crop_frames, 0) + 1))
        take = min(self.crop_frames, valid - offset)
        crops = {}
        for source in self.sources:
            joined = np.concatenate([sample[source][: int(sample["json"]["frames"])] for sample in run], axis=0)
            crop = np.zeros((self.crop_frames,) + joined.shape[1:], np.float16)
            crop[:take] = joined[offset: offset + take]
            crops[source] = crop
        return crops, take


class WdsMixerDataset(MixerBase):
    """Sequential streaming from the WebDataset shards (shard shuffle + crop shuffle buffer)."""

    def __init__(self, store_path: str | Path, config, rank: int | None = None, world_size: int | None = None,
                 buffer_size: int = 16):
        super().__init__(store_path, config, rank, world_size)
        if not self.store.geometry.wds:
            raise VRDataError(self.store_path, "store was built without WebDataset tars (--no-wds); "
                                               "use ZarrMixerDataset, or rebuild with --wds")
        if config.proportions.get("pretrain", 0) > 0 and tuple(config.pretrain_sources) != ("pretrain",):
            # A stream reads one set of sources from every sample; other roles' tars hold others.
            raise VRDataError(self.store_path, "pretrain_sources beyond 'pretrain' need the zarr backend")
        self.buffer_size = buffer_size
        self.wds_dir = self.store_path / "wds"

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
        # Enough shards: each slot its own; too few: slots share (documented duplicate risk).
        mine = shuffled[global_slot::slots] if len(shuffled) >= slots else [shuffled[global_slot % len(shuffled)]]
        rng = np.random.default_rng([self.config.seed, epoch, _STREAM_SALT[kind], global_slot, slots])
        return CropStream(self.wds_dir, mine, sources, self.config.crop_frames, rng, self.buffer_size)

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
            crops, valid = self._draw(streams["pair"], recipe, "instrumental")
            main[...], instrumental[...] = crops["mixture"], crops["instrumental"]
            if recipe.instrumental_only:
                main[...] = instrumental
            recipe.target_is_main, recipe.valid = recipe.instrumental_only, valid
        else:
            crops, valid = self._draw(streams[kind], recipe)
            main[...] = next(iter(crops.values())) if kind == "pretrain" else crops["instrumental"]
            recipe.target_is_main, recipe.valid = True, valid
            if recipe.has_vocal:
                vocal_crops, _ = self._draw(streams["vocal"], recipe)
                vocal[...] = vocal_crops["vocal"]
                vocal[valid:] = 0  # padding past the instrumental stays silent
        return recipe

    def _draw(self, stream: CropStream, recipe: Recipe, check: str | None = None):
        """Next crop of a stream, applying the silence rule to source `check` (default: the first)."""
        crops, valid = stream.next()
        rule = self.config.silence_rule
        source = check or next(iter(crops))
        attempts = 0
        while rule != "keep" and self.is_silent(crops[source]):
            recipe.silent += 1
            if rule == "count" or attempts >= self.config.max_resamples:
                break
            crops, valid = stream.next()
            attempts += 1
        return crops, valid
