"""Run by tests/test_mixer_ddp.py under torchrun (2 processes, gloo): each rank iterates one epoch
of the mixer, taking rank and world size from torch.distributed, then the ranks compare what they
saw with all_gather. Writes a JSON verdict from rank 0."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from vr_data.mixer import MixerConfig, MixerLoader, ZarrMixerDataset


def main(store: str, out: str) -> None:
    dist.init_process_group("gloo")
    config = MixerConfig(crop_frames=32, batch_size=4, seed=5, examples_per_epoch=50)
    loader = MixerLoader(ZarrMixerDataset(store, config))
    indices, batches = [], 0
    for batch in loader:
        batches += 1
        indices += batch["index"].tolist()
        dist.barrier()  # a rank with fewer batches would hang here; equal counts never do
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "batches": batches, "indices": indices})
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(gathered, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
