"""What a run checks and opens before its first step: processes and device, precision, the store
against the model and the curriculum, the checkpoint to resume, each stage's loader.

Everything here runs once per run (or once per stage, `make_loader`); the loop (`loop.py`) calls
these in order and passes what they return down, so no file is opened or read twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vr_data.errors import VRDataError
from vr_data.mixer import MixerLoader, WdsMixerDataset, ZarrMixerDataset
from vr_data.store.remote import Location, is_remote
from vr_model.network.checkpoint import read_checkpoint_json
from vr_model.train.elastic import check_stage_splits
from vr_model.train.config import TrainConfig
from vr_model.train.state import TrainingState, load_training_state, resume_checkpoint

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def setup_distributed(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL on CUDA, gloo on the CPU; each process takes the GPU of its LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_choice)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VRDataError(None, f"train.device = {device_choice} but CUDA is not available")
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def cpu_threads(world_size: int, loader_workers: int) -> int:
    """`train.threads = 0` on the CPU: the cores each rank has left after its loader workers
    (torch's default, every core, makes its OpenMP threads compete with the loader workers for
    the cores; docs/performance.md has the measurement)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, world_size) - loader_workers)


def set_threads(config: TrainConfig, world_size: int, device: torch.device) -> None:
    threads = config.train.threads or (cpu_threads(world_size, config.data.workers) if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` (`auto`: bf16 on CUDA, fp32 elsewhere); None = fp32."""
    dtype = PRECISIONS[precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")]
    if dtype is not None and device.type != "cuda":
        raise VRDataError(None, f"train.precision = {precision} needs CUDA; use fp32 on the CPU")
    return dtype


def check_store_matches_model(store, model_config, store_path) -> None:
    """The store's STFT must give the bins the model takes (refused before the first step)."""
    stft = store.config
    if stft.bins != model_config.bins + 1:
        raise VRDataError(store_path, f"store STFT (n_fft {stft.n_fft}, {stft.bins} bins) does not match the model "
                                      f"({model_config.bins + 1} bins, n_fft {2 * model_config.bins}); set "
                                      f"model.overrides.bins = {stft.bins - 1} or use a store built with n_fft "
                                      f"{2 * model_config.bins}")


def check_crops(config: TrainConfig, model_config, world_size: int) -> None:
    """Every stage's and the validation's crop fits the model; every global batch splits over the ranks."""
    for index, stage in enumerate(config.curriculum):
        if stage.crop_frames > model_config.max_frames:
            raise VRDataError(None, f"curriculum.{index}.crop_frames {stage.crop_frames} exceeds the model's "
                                    f"max_frames {model_config.max_frames}")
    check_stage_splits(config.curriculum, world_size)  # a global batch the ranks cannot split fails now
    if config.validation_crop_frames() > model_config.max_frames:
        raise VRDataError(None, f"validation.crop_frames {config.validation_crop_frames()} exceeds the model's "
                                f"max_frames {model_config.max_frames}")


def check_init_stft(init_document: dict, checkpoint: str, store, partial: bool) -> None:
    """An `--init` checkpoint (its `config.json`, already read) trained on the store's STFT."""
    recorded = init_document.get("extra", {}).get("stft")
    if recorded is not None and recorded != store.config.to_dict() and not partial:
        raise VRDataError(checkpoint, f"--init checkpoint was trained on another STFT ({recorded}) than the store's "
                                      f"({store.config.to_dict()})")


def store_name(store_path: Location) -> str:
    """How run.json names the store: an absolute path, or the s3:// URL (no credentials in it)."""
    return str(store_path) if is_remote(store_path) else str(Path(store_path).resolve())


def store_identity(store) -> str:
    """A content id of a store: its STFT, codec, geometry, source manifests and tracks."""
    meta = store.meta
    record = {"stft": meta.stft, "codec": meta.codec, "geometry": meta.geometry, "manifests": meta.manifests,
              "tracks": sorted((t.id, t.role, t.split, t.frames) for t in store.tracks)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ResumePoint:
    """The checkpoint a resumed run continues from, read once: its directory, its training state
    (`state.json`, `trainer.pt`) and its `config.json`."""

    directory: Path
    state: TrainingState
    document: dict


def find_resume_point(run_dir: Path, checkpoints_dir: Path, store_path, store_id: str, world_size: int,
                      writer: bool) -> ResumePoint | None:
    """The latest checkpoint of `run_dir`, checked whole and against this store and world size (None: the
    run has no checkpoint directory yet)."""
    newest = resume_checkpoint(run_dir, checkpoints_dir)  # checked whole; a damaged one is refused
    if newest is None:
        if writer:
            print(f"{run_dir}: no checkpoint yet; starting from step 0", flush=True)
        return None
    point = ResumePoint(newest, load_training_state(newest), read_checkpoint_json(newest))
    recorded = point.document["extra"].get("store_id")
    if recorded != store_id:
        raise VRDataError(store_path, f"is not the store this run trained on (store id {store_id}, "
                                      f"the run's {recorded}); exact resume needs the same store")
    return point


def make_loader(store_path, config: TrainConfig, stage_index: int, per_rank: int, rank: int, world_size: int,
                device: torch.device, position: dict | None) -> MixerLoader:
    """This rank's loader for a stage, at `position` (a `MixerLoader.state_dict()`) if given."""
    stage = config.curriculum[stage_index]
    mixer = config.mixer_config(stage, per_rank)
    step_examples = stage.batch_size * stage.accumulation  # an epoch is whole optimizer steps
    if config.data.backend == "wds":
        dataset = WdsMixerDataset(store_path, mixer, rank=rank, world_size=world_size, buffer_size=config.data.wds_buffer,
                                  step_examples=step_examples)
    else:
        dataset = ZarrMixerDataset(store_path, mixer, rank=rank, world_size=world_size, step_examples=step_examples)
    loader = MixerLoader(dataset, num_workers=config.data.workers, prefetch_factor=config.data.prefetch_factor,
                         pin_memory=device.type == "cuda", reuse_outputs=config.data.reuse_outputs,
                         records=config.log.examples)
    if position is not None:
        # the loader refuses other data settings (naming them) and maps a saved global position
        # onto this world size and worker count
        loader.load_state_dict(position)
    return loader
