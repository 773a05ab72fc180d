"""The training loop, top to bottom: set up, then per step get batches, forward, scaled backward,
clip, step, EMA, log, validate, checkpoint.

`train(store, run_dir, config)` runs a whole curriculum (or `resume=True` continues a run from
its latest checkpoint). Under `torchrun` every process runs it; rank 0 alone writes. Everything
that decides what a step computes (weights, optimizer, EMA, loader positions, RNG states, the
step) is in each checkpoint, so a killed run resumed from its checkpoint computes the same
losses, bit for bit on CPU, as if it had never stopped.

The loss is a mean over every valid element of an optimizer step (all micro-batches, all
ranks): each micro-batch's backward gets its error *sum* times a fixed factor, and once the
global element count is known (all-reduced) the gradients are rescaled to that mean. So two
ranks with batch b compute what one process with batch 2b computes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from vr_data.errors import VRDataError
from vr_data.mixer import MixerLoader, WdsMixerDataset, ZarrMixerDataset
from vr_data.store import open_store
from vr_model.network.checkpoint import CHECKPOINTS, EMA_WEIGHTS, WEIGHTS, list_checkpoints, load_weights, read_checkpoint_json
from vr_model.train.freeze import FreezePlan, apply_plan, unfreeze_into
from vr_model.normalisation import InputNormalisation
from vr_model.train.build import (
    ExponentialMovingAverage, build_model, init_from_checkpoint, make_optimizer, nominal_elements, parameter_groups,
    rank_batching,
)
from vr_model.train.config import TrainConfig, dump_config, load_config
from vr_model.train.elastic import check_resume_settings, check_stage_splits, resume_position, resume_rng  # elastic
from vr_model.train.ledger import ExampleLedger  # elastic
from vr_model.train.objectives import OBJECTIVES, StepContext
from vr_model.train.runlog import RunLog, format_seconds
from vr_model.train.schedule import learning_rate
from vr_model.train.state import (
    TrainingState, host_rng_state, load_training_state, prune_checkpoints, remove_unfinished, rng_state,
    save_training_checkpoint, set_host_rng_state, write_best,
)
from vr_model.train.validation import FixedCrops, Validator, validation_kind, validation_mixer_config

CONFIG_TOML = "config.toml"
RUN_JSON = "run.json"


class TrainingStopped(VRDataError):
    """The run stopped on purpose (too many non-finite steps); a checkpoint was saved first."""


@dataclass
class RunSummary:
    run_dir: Path
    steps: int                      # optimizer steps done in total (resumed runs count from 0)
    steps_this_run: int
    examples: int                   # examples seen in total
    seconds: float                  # wall time of this process's loop
    data_wait_seconds: float        # of which blocked on the loader
    first_loss: float | None        # mean loss of the first / last log interval of this run
    last_loss: float | None
    best_valid_loss: float | None
    nonfinite_steps: int
    last_checkpoint: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of every step of this run

    @property
    def data_wait_share(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0


def train(store_path: str | Path, run_dir: str | Path, config: TrainConfig | None = None, *, resume: bool = False,
          init: str | Path | None = None, init_partial: bool = False, resume_settings: tuple[str, ...] = ()) -> RunSummary:
    """Train from the store into `run_dir` (see the module docstring and docs/training.md).

    `resume=True`: continue `run_dir` from its latest checkpoint with the run's own
    `config.toml` (`config` must be None; `resume_settings`: `key=value` overrides of the few
    settings a resume may change, `elastic.RESUME_SETTINGS`, e.g. `data.workers=2`); at any
    world size that splits every stage's global batch. `init`: start from a checkpoint's weights (strictly
    the same model config unless `init_partial`).
    """
    run_dir = Path(run_dir)
    checkpoints_dir = run_dir / CHECKPOINTS
    if resume:
        if config is not None:
            raise VRDataError(run_dir, "a resumed run uses its own config.toml; --config/--set are not allowed")
        if not (run_dir / CONFIG_TOML).is_file():
            raise VRDataError(run_dir, f"nothing to resume: no {CONFIG_TOML}")
        config = load_config(run_dir / CONFIG_TOML, check_resume_settings(resume_settings))  # elastic
    else:
        config = config or TrainConfig()
        if list_checkpoints(checkpoints_dir):
            raise VRDataError(run_dir, "already holds checkpoints: resume it with --resume, or choose another --out")
    # -- processes, device, precision ------------------------------------------------------------
    rank, world_size, device = setup_distributed(config.train.device)
    try:
        return _train(Path(store_path), run_dir, config, resume, init, init_partial, rank, world_size, device)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(store_path, run_dir, config, resume, init, init_partial, rank, world_size, device) -> RunSummary:
    writer = rank == 0
    checkpoints_dir = run_dir / CHECKPOINTS
    train_cfg = config.train
    threads = train_cfg.threads or (cpu_threads(world_size, config.data.workers) if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[
        train_cfg.precision if train_cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")]
    if autocast_dtype is not None and device.type != "cuda":
        raise VRDataError(None, f"train.precision = {train_cfg.precision} needs CUDA; use fp32 on the CPU")
    objective = OBJECTIVES[train_cfg.objective]

    # -- the store and the model must agree before anything runs ------------------------------
    store = open_store(store_path)
    model_config = config.model_config()
    check_store_matches_model(store, model_config, store_path)
    for index, stage in enumerate(config.curriculum):
        if stage.crop_frames > model_config.max_frames:
            raise VRDataError(None, f"curriculum.{index}.crop_frames {stage.crop_frames} exceeds the model's "
                                    f"max_frames {model_config.max_frames}")
    check_stage_splits(config.curriculum, world_size)  # elastic: a global batch the ranks cannot split fails now
    if config.validation_crop_frames() > model_config.max_frames:
        raise VRDataError(None, f"validation.crop_frames {config.validation_crop_frames()} exceeds the model's "
                                f"max_frames {model_config.max_frames}")
    store_id = store_identity(store)
    mixer_first = config.mixer_config(config.curriculum[0], 1)
    normalisation = InputNormalisation.for_mixer(store_path, mixer_first.normalisation, mixer_first.stats_role)

    # -- the run directory ------------------------------------------------------------------------
    resume_state = None
    resume_dir = None
    if resume:
        found = list_checkpoints(checkpoints_dir)
        if not found and writer:
            print(f"{run_dir}: no checkpoint yet; starting from step 0", flush=True)
        if found:
            resume_dir = found[-1]
            resume_state = load_training_state(resume_dir)
            recorded = read_checkpoint_json(resume_dir)["extra"]
            if recorded.get("store_id") != store_id:
                raise VRDataError(store_path, f"is not the store this run trained on (store id {store_id}, "
                                              f"the run's {recorded.get('store_id')}); exact resume needs the same store")
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_unfinished(checkpoints_dir)
        _write_text(run_dir / CONFIG_TOML, dump_config(config))
        _write_text(run_dir / RUN_JSON, json.dumps({"store": str(Path(store_path).resolve()), "store_id": store_id,
                                                    "world_size": world_size}, indent=1) + "\n")
    total_steps = config.total_steps()
    log = RunLog(run_dir, writer, total_steps, config.log.progress, config.log.tensorboard,
                 resume_step=resume_state.step if resume_state else None)

    # -- model, optimizer, EMA, scaler --------------------------------------------------------------
    model = build_model(model_config, train_cfg.seed, config.model.gradient_checkpointing).to(device)
    if init is not None and resume_state is None:
        report = init_from_checkpoint(model, init, partial=init_partial)
        check_init_stft(report.checkpoint, store, init_partial)
        log.line(f"init: {len(report.loaded)} tensors from {report.checkpoint}"
                 + (f"; not loaded: {', '.join(report.missing)}" if report.missing else "")
                 + (f"; not in this model: {', '.join(report.unexpected)}" if report.unexpected else "")
                 + (f"; new head ({report.head}): {', '.join(report.new_head)}" if report.new_head else ""))
    # Freezing (finetuning): the model and the optimizer as they were for the last step done.
    freeze_plan = FreezePlan(train_cfg.freeze, train_cfg.unfreeze_after or None)
    steps_done = resume_state.step if resume_state is not None else 0
    frozen = freeze_plan.frozen_at(max(steps_done - 1, 0))
    counts = apply_plan(model, freeze_plan, max(steps_done - 1, 0))
    until = f" for steps 1-{freeze_plan.unfreeze_after}" if freeze_plan.unfreeze_after else ""
    log.line(f"parameters: {counts}" + (f" ({freeze_plan.part} frozen{until})" if frozen else ""))
    optimizer = make_optimizer(model, train_cfg, device, freeze_plan, max(steps_done - 1, 0))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    ema = ExponentialMovingAverage(model, train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None
    torch.manual_seed(train_cfg.seed * 1000 + 1 + rank)  # dropout: a stream per rank
    counters = {"examples": 0, "nonfinite_steps": 0, "nonfinite_streak": 0, "best_valid_loss": None, "ema_updates": 0}
    step = 0
    if resume_state is not None:
        with torch.no_grad():
            for name, tensor in load_weights(resume_dir / WEIGHTS, device).items():
                model.state_dict()[name].copy_(tensor)
        if ema is not None:
            ema.load(load_weights(resume_dir / EMA_WEIGHTS, device), resume_state.counters.get("ema_updates", 0))
        optimizer.load_state_dict(resume_state.optimizer)
        scaler.load_state_dict(resume_state.scaler)
        resume_rng(resume_state.rng, rank, world_size, train_cfg.seed, resume_state.step, device)  # elastic
        set_host_rng_state(resume_state.host_rng)
        counters.update(resume_state.counters)
        step = resume_state.step
        log.line(f"resumed from {resume_dir.name}: step {step}/{total_steps}"
                 + (f" (checkpointed at {len(resume_state.loaders)} rank(s), now {world_size})"  # elastic
                    if len(resume_state.loaders) != world_size else ""))
    else:
        log.line(f"run: {model.num_parameters():,} parameters, {total_steps} steps in {len(config.curriculum)} "
                 f"stage(s), {world_size} process(es) on {device}, store {store_path}")
    # What the objective calls: the model, compiled and/or wrapped in DDP (which keeps no_sync).
    train_model: torch.nn.Module = torch.compile(model) if config.model.compile else model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    parameters = [p for p in model.parameters() if p.requires_grad]

    # -- validation set (fixed crops of the valid split) ------------------------------------------
    validator = None
    if writer:
        kind = validation_kind(store, objective=train_cfg.objective)
        if kind is None:
            log.line("validation: the store has no valid items (pairs, or vocals and instrumentals); no validation")
        else:
            crops = FixedCrops(store_path, validation_mixer_config(mixer_first, config.validation_crop_frames(),
                                                                   config.validation.batch_size),
                               kind, config.validation.crops_per_track)
            validator = Validator(crops, model_config, objective, config, device, autocast_dtype, normalisation,
                                  notice=log.line)
            log.line(f"validation: {crops.real_examples} fixed {kind} crops of "
                     f"{config.validation_crop_frames()} frames from the valid split")
    has_validation = _broadcast(validator is not None, world_size)

    # -- the loop ---------------------------------------------------------------------------------
    loader = batches = None
    stage_index = -1
    loader_position = resume_position(resume_state.loaders, rank) if resume_state else None  # elastic
    ledger = ExampleLedger(run_dir, config.log.examples, writer, step)  # elastic
    run_started = time.perf_counter()
    data_wait = 0.0
    interval = _Interval()
    losses: list[tuple[int, float]] = []
    first_loss = last_loss = None
    last_checkpoint = None
    start_step = step
    while step < total_steps:
        # Curriculum: a new stage gets a new loader (its crop length and batch) at the next epoch.
        if config.stage_at(step + 1) != stage_index:
            if loader is not None:
                loader_position = {"epoch": loader.state_dict()["epoch"] + 1, "batch": 0}
                loader.close()
            elif resume_state is not None and resume_state.stage != config.stage_at(step + 1):
                loader_position = {"epoch": loader_position["epoch"] + 1, "batch": 0}  # saved at a stage's end
            stage_index = config.stage_at(step + 1)
            stage = config.curriculum[stage_index]
            per_rank, accumulation = rank_batching(stage, world_size)
            loader = make_loader(store_path, config, stage_index, per_rank, rank, world_size, device, loader_position)
            batches = _endless(loader)
            nominal = nominal_elements(stage, model_config.in_channels, model_config.bins + 1)
            log.line(f"stage {stage_index + 1}/{len(config.curriculum)}: {stage.crop_frames} frames, "
                     f"{per_rank} examples x {accumulation} accumulation x {world_size} rank(s) per step, "
                     f"steps {config.stage_start(stage_index) + 1}-{config.stage_start(stage_index) + stage.steps}")
        step += 1
        if frozen and not freeze_plan.frozen_at(step - 1):
            counts = unfreeze_into(optimizer, model, freeze_plan,
                                   lambda params: parameter_groups(model, train_cfg.weight_decay, params))
            parameters = [p for p in model.parameters() if p.requires_grad]
            if world_size > 1:  # DDP registers the parameters that need gradients when it wraps the model
                train_model = torch.nn.parallel.DistributedDataParallel(
                    torch.compile(model) if config.model.compile else model,
                    device_ids=[device.index] if device.type == "cuda" else None)
            frozen = False
            log.line(f"step {step}: {freeze_plan.part} unfrozen; {counts}")
        lr = learning_rate(step, total_steps, train_cfg.lr, train_cfg.min_lr, train_cfg.warmup_steps,
                           train_cfg.decay, train_cfg.decay_power)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # forward and backward over the micro-batches; gradients sync on the last one only
        step_started = time.perf_counter()
        error_sum = torch.zeros((), device=device)
        count = torch.zeros((), device=device)
        step_records: list[dict] = []  # elastic: the ledger's records of this step's examples
        try:
            for micro in range(accumulation):
                waited = time.perf_counter()
                with torch.random.fork_rng(devices=[]):  # a DataLoader draws its seed from torch's RNG
                    batch = next(batches)
                data_wait += time.perf_counter() - waited
                interval.data_wait += time.perf_counter() - waited
                step_records += batch.pop("examples", [])  # elastic
                batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                sync = world_size > 1 and micro < accumulation - 1
                with train_model.no_sync() if sync and hasattr(train_model, "no_sync") else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                        terms = objective(train_model, batch, config, StepContext(step, micro, rank, world_size))
                    # DDP averages gradients over ranks: x world_size makes that a sum.
                    scaler.scale(terms.error_sum * (world_size / nominal)).backward()
                error_sum += terms.error_sum.detach()
                count += terms.count.detach()
                del batch, terms  # the loader may reuse the batch's buffers from here on
        except torch.cuda.OutOfMemoryError:
            raise VRDataError(None, f"CUDA out of memory in stage {stage_index + 1} ({stage.crop_frames} frames, "
                                    f"{per_rank} examples per forward pass): lower curriculum.{stage_index}.batch_size "
                                    f"and raise its accumulation by the same factor (the global batch stays), or set "
                                    f"model.gradient_checkpointing = true") from None
        totals = torch.stack([error_sum, count])
        if world_size > 1:
            dist.all_reduce(totals)
        loss = float(totals[0] / totals[1].clamp_min(1))
        scaler.unscale_(optimizer)
        factor = nominal / float(totals[1].clamp_min(1))        # gradients of the sum -> of the mean
        grads = [p.grad for p in parameters if p.grad is not None]
        torch._foreach_mul_(grads, factor)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, train_cfg.grad_clip or math.inf))
        finite = math.isfinite(loss) and (math.isfinite(grad_norm) or scaler.is_enabled())
        if finite:
            scaler.step(optimizer)   # with fp16 the scaler itself skips steps whose gradients overflowed
            scaler.update()
            if ema is not None:
                ema.update(model)
                counters["ema_updates"] = ema.updates
            counters["nonfinite_streak"] = 0
        else:
            if scaler.is_enabled():
                scaler.update()
            counters["nonfinite_steps"] += 1
            counters["nonfinite_streak"] += 1
            log.line(f"step {step}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'} "
                     f"({loss} / grad norm {grad_norm}); step skipped "
                     f"({counters['nonfinite_streak']} in a row, {counters['nonfinite_steps']} in total)")
        optimizer.zero_grad(set_to_none=True)
        ledger.add(step, loader.epoch, step_records, world_size)  # elastic
        step_examples = stage.batch_size * stage.accumulation
        counters["examples"] += step_examples
        if finite:
            losses.append((step, loss))
            interval.add(loss, grad_norm)
        interval.examples += step_examples
        interval.seconds += time.perf_counter() - step_started

        # log
        stage_end = step == config.stage_start(stage_index) + stage.steps
        if step % config.log.every == 0 or stage_end or step == total_steps:
            record = interval.record(step, stage_index, lr, loader.state_dict()["epoch"])
            if record["loss"] is not None:
                first_loss = record["loss"] if first_loss is None else first_loss
                last_loss = record["loss"]
            record["examples"] = counters["examples"]
            record["nonfinite_steps"] = counters["nonfinite_steps"]
            log.record(record)
            remaining = (total_steps - step) * record["seconds_per_step"]
            log.progress(step, f"{stage_index + 1}/{len(config.curriculum)}", record["loss"] or float("nan"), lr,
                         record["examples_per_s"], record["data_wait"], remaining)
            interval = _Interval()

        # validate
        valid_loss = None
        if has_validation and (step == total_steps or stage_end
                               or (config.validation.every and step % config.validation.every == 0)):
            if writer:
                weights = ema.state_dict() if ema is not None and config.validation.weights == "ema" else model.state_dict()
                record = validator.run(weights)
                valid_loss = record["valid_loss"]
                log.record({"kind": "valid", "step": step, "stage": stage_index, **record})
                sdr = (f", SDR {record['valid_sdr']:.2f} dB (floor {record['valid_sdr_floor']:.2f}, ceiling "
                       f"{record['valid_sdr_ceiling']:.2f}) on {record['valid_sdr_songs']} song(s)"
                       if "valid_sdr" in record else "")   # vr_model.inference.evaluate.valid_sdr, validation.sdr_songs > 0
                log.line(f"step {step}: valid loss {valid_loss:.5f}{sdr}")
            valid_loss = _broadcast(valid_loss, world_size)
        improved = valid_loss is not None and (counters["best_valid_loss"] is None
                                               or valid_loss < counters["best_valid_loss"])
        if improved:
            counters["best_valid_loss"] = valid_loss

        # checkpoint (rank 0 writes; every rank contributes its loader position and RNG state)
        stopping = counters["nonfinite_streak"] >= train_cfg.max_nonfinite
        if step % config.checkpoint.every == 0 or stage_end or step == total_steps or improved or stopping:
            state = TrainingState(
                step=step, stage=stage_index, loaders=_gather(loader.state_dict(), world_size),
                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                rng=_gather(rng_state(device), world_size), counters=dict(counters), host_rng=host_rng_state(),
            )
            if writer:
                ledger.sync()  # elastic: the ledger's lines up to this checkpoint are durable before it is
                extra = checkpoint_extra(config, store, store_id, normalisation, step, stage_index, loader)
                last_checkpoint = save_training_checkpoint(checkpoints_dir, model, ema.state_dict() if ema else None,
                                                           extra, state)
                if improved:
                    write_best(checkpoints_dir, last_checkpoint, step, valid_loss)
                prune_checkpoints(checkpoints_dir, config.checkpoint.keep)
            if world_size > 1:
                dist.barrier()
        if stopping:
            ledger.close()  # elastic
            log.line(f"stopped: {train_cfg.max_nonfinite} steps in a row had a non-finite loss or gradient "
                     f"(step {step}); saved {last_checkpoint}. Lower train.lr, check the data "
                     f"(`vrdata verify`), or use precision fp32.")
            log.close()
            raise TrainingStopped(run_dir, f"stopped after {train_cfg.max_nonfinite} non-finite steps in a row "
                                           f"at step {step}; the last checkpoint is {last_checkpoint}")

    if loader is not None:
        loader.close()
    ledger.close()  # elastic
    seconds = time.perf_counter() - run_started
    summary = RunSummary(
        run_dir=run_dir, steps=step, steps_this_run=step - start_step, examples=counters["examples"], seconds=seconds,
        data_wait_seconds=data_wait, first_loss=first_loss, last_loss=last_loss,
        best_valid_loss=counters["best_valid_loss"], nonfinite_steps=counters["nonfinite_steps"],
        last_checkpoint=last_checkpoint, losses=losses,
    )
    log.line(summary_line(summary))
    log.close()
    return summary


# -- helpers, in the order the loop uses them ------------------------------------------------------
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
    """`train.threads = 0` on the CPU: the cores each rank has left after its loader workers.

    torch's default (every core) makes OpenMP threads compete with the loader worker for a core;
    they spin-wait and get preempted. Measured on this project's 2-core machine (load average
    11-12): `tiny`, 256 frames, batch 2, 1 worker: 27-48 s per step with 2 threads, 9-10 s
    with 1 (the run's steps 2-4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, world_size) - loader_workers)


def check_store_matches_model(store, model_config, store_path) -> None:
    """The store's STFT must give the bins the model takes (refused before the first step)."""
    stft = store.config
    if stft.bins != model_config.bins + 1:
        raise VRDataError(store_path, f"store STFT (n_fft {stft.n_fft}, {stft.bins} bins) does not match the model "
                                      f"({model_config.bins + 1} bins, n_fft {2 * model_config.bins}); set "
                                      f"model.overrides.bins = {stft.bins - 1} or use a store built with n_fft "
                                      f"{2 * model_config.bins}")


def check_init_stft(checkpoint: str, store, partial: bool) -> None:
    recorded = read_checkpoint_json(checkpoint).get("extra", {}).get("stft")
    if recorded is not None and recorded != store.config.to_dict() and not partial:
        raise VRDataError(checkpoint, f"--init checkpoint was trained on another STFT ({recorded}) than the store's "
                                      f"({store.config.to_dict()})")


def store_identity(store) -> str:
    """A content id of a store: its STFT, codec, geometry, source manifests and tracks."""
    meta = store.meta
    record = {"stft": meta.stft, "codec": meta.codec, "geometry": meta.geometry, "manifests": meta.manifests,
              "tracks": sorted((t.id, t.role, t.split, t.frames) for t in store.tracks)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_loader(store_path, config: TrainConfig, stage_index: int, per_rank: int, rank: int, world_size: int,
                device: torch.device, position: dict | None) -> MixerLoader:
    """This rank's loader for a stage, at `position` (a `MixerLoader.state_dict()`) if given."""
    stage = config.curriculum[stage_index]
    mixer = config.mixer_config(stage, per_rank)
    step_examples = stage.batch_size * stage.accumulation  # elastic: the epoch is whole optimizer steps
    if config.data.backend == "wds":
        dataset = WdsMixerDataset(store_path, mixer, rank=rank, world_size=world_size, buffer_size=config.data.wds_buffer,
                                  step_examples=step_examples)
    else:
        dataset = ZarrMixerDataset(store_path, mixer, rank=rank, world_size=world_size, step_examples=step_examples)
    loader = MixerLoader(dataset, num_workers=config.data.workers, prefetch_factor=config.data.prefetch_factor,
                         pin_memory=device.type == "cuda", reuse_outputs=config.data.reuse_outputs,
                         records=config.log.examples)
    if position is not None:
        # elastic: the whole saved state; the loader refuses other data settings (naming them) and
        # maps the saved global position onto this world size
        loader.load_state_dict(position)
    return loader


def _endless(loader: MixerLoader):
    while True:
        yield from loader


class _Interval:
    """Sums over one log interval."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.examples = 0
        self.seconds = 0.0
        self.data_wait = 0.0
        self.steps = 0

    def add(self, loss: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)

    def record(self, step: int, stage: int, lr: float, epoch: int) -> dict:
        steps = max(1, len(self.losses))
        return {
            "kind": "train", "step": step, "stage": stage, "epoch": epoch, "lr": lr,
            "loss": sum(self.losses) / len(self.losses) if self.losses else None,
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else None,
            "examples_per_s": self.examples / self.seconds if self.seconds > 0 else 0.0,
            "data_wait": self.data_wait / self.seconds if self.seconds > 0 else 0.0,
            "seconds_per_step": self.seconds / steps,
        }


def checkpoint_extra(config: TrainConfig, store, store_id: str, normalisation: InputNormalisation, step: int,
                     stage: int, loader: MixerLoader) -> dict:
    """What `config.json` records besides the model config (`docs/training.md`)."""
    return {
        "normalisation": normalisation.to_dict(), "stft": store.config.to_dict(), "store_id": store_id,
        "mixer": loader.dataset.config.to_dict(), "train": config.to_dict(), "step": step, "stage": stage,
        "objective": config.train.objective,
    }


def summary_line(summary: RunSummary) -> str:
    parts = [f"done: step {summary.steps}, {summary.steps_this_run} steps in {format_seconds(summary.seconds)}"]
    if summary.first_loss is not None:
        parts.append(f"loss {summary.first_loss:.5f} -> {summary.last_loss:.5f}")
    if summary.best_valid_loss is not None:
        parts.append(f"best valid loss {summary.best_valid_loss:.5f}")
    parts.append(f"data wait {100 * summary.data_wait_share:.1f}% of the time")
    if summary.nonfinite_steps:
        parts.append(f"{summary.nonfinite_steps} non-finite steps skipped")
    return "; ".join(parts)


def _broadcast(value, world_size: int):
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value, world_size: int) -> list:
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _write_text(path: Path, text: str) -> None:
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)
