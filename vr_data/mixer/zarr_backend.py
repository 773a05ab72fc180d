"""The mixer's random-access backend: crops read from the store's Zarr arrays (tensorstore)."""

from __future__ import annotations

import numpy as np

from vr_data.mixer.base import MixerBase
from vr_data.mixer.config import CropBuffers, Recipe
from vr_data.mixer.sampling import KINDS, example_rng

# Salts of an example's separate random streams: its recipe, its silence resamples, its vocal.
_RECIPE, _RESAMPLE, _VOCAL = 0, 1, 2


class ZarrMixerDataset(MixerBase):
    """Random access into the store's Zarr arrays; batches are a pure function of
    (seed, epoch, rank, batch) - not of the number of DataLoader workers.

    A batch's crops are read together (`Store.read_many`: every read in flight at once); each
    example draws its recipe, its vocal and its silence resamples from separate random streams
    keyed by its index, so the order of reads never changes what an example is.
    """

    def __iter__(self):
        """Endless batches from (epoch, start_batch) on; this worker makes every W-th one."""
        worker, num_workers = self.worker()
        buffers = self.new_buffers()
        plan = None
        for epoch, k in self.positions(worker, num_workers):
            if plan is None or plan.epoch != epoch:
                plan = self.plan(epoch)
            recipes, indices = self.assemble(plan, k, buffers)
            yield self.finish_batch(buffers, recipes, indices, epoch, k)

    def example_batch(self, epoch: int, k: int) -> dict:
        """Batch `k` of this rank in `epoch`, computed directly (tests, previews)."""
        buffers = self.new_buffers()
        recipes, indices = self.assemble(self.plan(epoch), k, buffers)
        return self.finish_batch(buffers, recipes, indices, epoch, k)

    def assemble(self, plan, k: int, buffers: CropBuffers) -> tuple[list[Recipe], list[int]]:
        """Read the stored crops of batch `k` into `buffers`; returns each example's recipe and
        its index in the epoch."""
        indices = list(plan.example_indices(self.rank, k))
        cells = self.cells(plan.epoch)
        recipes, resample_rngs, vocal_rngs = [], [], []
        for index in indices:
            kind = KINDS[int(plan.kinds[index])]
            recipe = self.draw_recipe(example_rng(self.config.seed, plan.epoch, index, _RECIPE), kind)
            cell = int(plan.cell[index])
            recipe.main = (int(cells[kind].track[cell]), int(cells[kind].start[cell]))
            resample_rngs.append(example_rng(self.config.seed, plan.epoch, index, _RESAMPLE))
            vocal_rng = None
            if recipe.has_vocal:
                vocal_rng = example_rng(self.config.seed, plan.epoch, index, _VOCAL)
                recipe.vocal_pick = self._pick_vocal(vocal_rng)
            vocal_rngs.append(vocal_rng)
            recipes.append(recipe)
        self._read_batch(recipes, range(len(recipes)), buffers, main=True, vocal=True)
        self._apply_silence_rule(recipes, buffers, resample_rngs, vocal_rngs, plan.epoch)
        for j, recipe in enumerate(recipes):
            if recipe.kind == "pair" and recipe.instrumental_only:
                buffers.main[j] = buffers.instrumental[j]
            if recipe.has_vocal:
                buffers.vocal[j][recipe.valid:] = 0  # padding past the instrumental stays silent
            recipe.target_is_main = recipe.kind != "pair" or recipe.instrumental_only
        return recipes, indices

    def _pick_vocal(self, rng: np.random.Generator) -> tuple[int, int]:
        """A vocal track (weighted by length) and a first frame anywhere in it (multiples of
        `vocal_offset_step` if set). An offset off the chunk grid decodes two chunks instead of
        one; docs/performance.md measures what that costs."""
        library = self.libraries["vocal"]
        track_index = int(rng.choice(len(library.entries), p=library.frames / library.frames.sum()))
        step = self.config.vocal_offset_step or 1
        last = max(int(library.frames[track_index]) - self.config.crop_frames, 0)
        return track_index, step * int(rng.integers(0, last // step + 1))

    def _read_batch(self, recipes: list[Recipe], which, buffers: CropBuffers, *, main: bool, vocal: bool) -> None:
        """Read the main crops and/or vocal crops of examples `which` in one `read_many`."""
        crop = self.config.crop_frames
        requests, targets = [], []
        for j in which:
            recipe = recipes[j]
            if main:
                library = self.libraries[recipe.kind]
                track_index, start = recipe.main
                track, source = library.entries[track_index]
                stop = min(start + crop, track.frames)
                recipe.valid = stop - start
                if recipe.kind == "pair":
                    requests += [(track, "mixture", start, stop), (track, "instrumental", start, stop)]
                    targets += [buffers.main[j], buffers.instrumental[j]]
                else:
                    requests.append((track, source, start, stop))
                    targets.append(buffers.main[j])
            if vocal and recipe.has_vocal:
                track_index, start = recipe.vocal_pick
                track, source = self.libraries["vocal"].entries[track_index]
                requests.append((track, source, start, min(start + crop, track.frames)))
                targets.append(buffers.vocal[j])
        # Decode straight into the batch buffers; zero what lies past each track's end.
        self.store.read_many_into(requests, [out[: stop - start] for out, (_, _, start, stop) in zip(targets, requests)])
        for out, (_, _, start, stop) in zip(targets, requests):
            out[stop - start:] = 0

    def _apply_silence_rule(self, recipes: list[Recipe], buffers: CropBuffers, resample_rngs, vocal_rngs,
                            epoch: int) -> None:
        """Count near-silent crops; with `resample`, redraw them (up to `max_resamples` rounds,
        each round re-checking only the crops it redrew)."""
        rule = self.config.silence_rule
        if rule == "keep":
            return
        check_main = list(range(len(recipes)))
        check_vocal = [j for j, recipe in enumerate(recipes) if recipe.has_vocal]
        for attempt in range(self.config.max_resamples + 1):
            silent_main = [j for j in check_main if self.is_silent(
                buffers.instrumental[j] if recipes[j].kind == "pair" else buffers.main[j])]
            silent_vocal = [j for j in check_vocal if self.is_silent(buffers.vocal[j])]
            for j in silent_main + silent_vocal:
                recipes[j].silent += 1
            if rule == "count" or attempt == self.config.max_resamples or not (silent_main or silent_vocal):
                return
            for j in silent_main:
                cells = self.cells(epoch)[recipes[j].kind]
                cell = int(resample_rngs[j].integers(0, len(cells)))
                recipes[j].main = (int(cells.track[cell]), int(cells.start[cell]))
            for j in silent_vocal:
                recipes[j].vocal_pick = self._pick_vocal(vocal_rngs[j])
            self._read_batch(recipes, silent_main, buffers, main=True, vocal=False)
            self._read_batch(recipes, silent_vocal, buffers, main=False, vocal=True)
            check_main, check_vocal = silent_main, silent_vocal
