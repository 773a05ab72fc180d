"""The training loop, top to bottom: set up, restore, then per step get batches, forward, scaled
backward, clip, step, EMA, log, validate, checkpoint.

`train(store, run_dir, config)` runs a whole curriculum (or `resume=True` continues a run from
its latest checkpoint). Under `torchrun` every process runs it; rank 0 alone writes. Everything
that decides what a step computes (weights, optimizer, EMA, loader positions, RNG states, the
step) is in each checkpoint, so a killed run resumed from its checkpoint computes the same
losses, bit for bit on CPU, as if it had never stopped.

The loss is a mean over every valid element of an optimizer step (all micro-batches, all
ranks): each micro-batch's backward gets its error *sum* times a fixed factor, and once the
global element count is known (all-reduced) the gradients are rescaled to that mean. So two
ranks with batch b compute what one process with batch 2b computes.

The host reads one flag per step (was the loss and gradient finite: skip the step if not) and the
losses and gradient norms only at the log interval. SIGTERM or Ctrl-C stops the run at the next
step boundary with a checkpoint (`preempt.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from vr_data.errors import VRDataError
from vr_data.io import atomic_write_text
from vr_data.mixer import MixerLoader
from vr_data.mixer.normalisation import InputNormalisation
from vr_data.store import open_store
from vr_data.store.remote import location
from vr_model.network.checkpoint import CHECKPOINTS, EMA_WEIGHTS, WEIGHTS, load_weights
from vr_model.train.build import (
    ExponentialMovingAverage, build_model, init_from_checkpoint, make_optimizer, nominal_elements, parameter_groups,
    rank_batching,
)
from vr_model.train.config import Stage, TrainConfig, check_store_has_examples, dump_config
from vr_model.train.elastic import resume_position, resume_rng
from vr_model.train.freeze import FreezePlan, apply_plan, unfreeze_into
from vr_model.train.ledger import ExampleLedger
from vr_model.train.objectives import OBJECTIVES, StepContext, forward_terms
from vr_model.train.preempt import StopRequests, TrainingInterrupted, agree, resume_command
from vr_model.train.runlog import RunLog, format_loss, format_seconds
from vr_model.train.schedule import learning_rate
from vr_model.train.setup import (
    ResumePoint, autocast_dtype, check_crops, check_init_stft, check_store_matches_model, find_resume_point,
    make_loader, set_threads, setup_distributed, store_identity, store_name,
)
from vr_model.train.state import (
    TrainingState, host_rng_state, lock_run_dir, prune_checkpoints, remove_unfinished, resumed_config, rng_state,
    save_training_checkpoint, set_host_rng_state, step_directories, write_best,
)
from vr_model.train.validation import FixedCrops, Validator, validation_kind, validation_mixer_config

CONFIG_TOML = "config.toml"
RUN_JSON = "run.json"


class TrainingStopped(VRDataError):
    """The run stopped on purpose (too many non-finite steps); a checkpoint was saved first."""


@dataclass
class RunState:
    """What a run carries from step to step besides the weights and optimizer: the step done
    last and the counters `state.json` saves (`counters()`)."""

    step: int = 0
    examples: int = 0                 # examples seen in total
    nonfinite_steps: int = 0          # steps skipped for a non-finite loss or gradient, in total
    nonfinite_streak: int = 0         # ... in a row, up to the last step
    best_valid_loss: float | None = None
    ema_updates: int = 0

    def counters(self) -> dict:
        return {"examples": self.examples, "nonfinite_steps": self.nonfinite_steps,
                "nonfinite_streak": self.nonfinite_streak, "best_valid_loss": self.best_valid_loss,
                "ema_updates": self.ema_updates}

    @classmethod
    def restored(cls, state: TrainingState) -> RunState:
        known = {key: value for key, value in state.counters.items() if key in cls.__dataclass_fields__}
        return cls(step=state.step, **known)


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


@dataclass
class Run:
    """Everything a step needs, made once by `set_up`: where, how, the model and its optimizer."""

    config: TrainConfig
    run_dir: Path
    store_path: Path
    store: object
    store_id: str
    normalisation: InputNormalisation
    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    log: RunLog
    model: torch.nn.Module                  # the bare model (what checkpoints hold)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ExponentialMovingAverage | None
    freeze_plan: FreezePlan
    frozen: bool
    state: RunState = field(default_factory=RunState)
    train_model: torch.nn.Module | None = None  # what the objective calls: compiled and/or DDP-wrapped
    parameters: list = field(default_factory=list)
    validator: Validator | None = None
    ledger: ExampleLedger | None = None        # examples.jsonl (log.examples), made by train_loop
    has_validation: bool = False
    last_checkpoint: Path | None = None

    @property
    def writer(self) -> bool:
        return self.rank == 0

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS


@dataclass
class Feed:
    """The current stage's batches on this rank: `per_rank` examples x `accumulation` per step."""

    index: int
    stage: Stage
    per_rank: int
    accumulation: int
    loader: MixerLoader
    batches: object
    nominal: float                          # loss elements of a step without padding (backward's scale)


class Interval:
    """One log interval's per-step losses and gradient norms, kept on the device until `read`."""

    def __init__(self):
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []   # (loss, grad norm) of each finite step
        self.examples = 0
        self.seconds = 0.0
        self.data_wait = 0.0

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.steps.append(step)
        self.values.append(torch.stack([loss.detach().float(), grad_norm.detach().float()]))

    def record(self, step: int, stage: int, lr: float, epoch: int) -> tuple[dict, list[tuple[int, float]]]:
        """The metrics record (one device-to-host read) and the interval's (step, loss) pairs."""
        pairs = torch.stack(self.values).tolist() if self.values else []
        losses, grad_norms = [loss for loss, _ in pairs], [norm for _, norm in pairs]
        record = {
            "kind": "train", "step": step, "stage": stage, "epoch": epoch, "lr": lr,
            "loss": sum(losses) / len(losses) if losses else None,
            "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else None,
            "examples_per_s": self.examples / self.seconds if self.seconds > 0 else 0.0,
            "data_wait": self.data_wait / self.seconds if self.seconds > 0 else 0.0,
            "seconds_per_step": self.seconds / max(1, len(losses)),
        }
        return record, list(zip(self.steps, losses))


def train(store_path: str | Path, run_dir: str | Path, config: TrainConfig | None = None, *, resume: bool = False,
          init: str | Path | None = None, init_partial: bool = False) -> RunSummary:
    """Train from the store into `run_dir` (see the module docstring and docs/training.md).

    `resume=True`: continue `run_dir` from its latest checkpoint with the run's own
    `config.toml` (`config` must be None). `init`: start from a checkpoint's weights (strictly
    the same model config unless `init_partial`). Raises `TrainingStopped` (non-finite steps)
    and `TrainingInterrupted` (a signal), each after saving a checkpoint.
    """
    run_dir = Path(run_dir)
    if resume:
        # the run's config.toml; `config` may only extend its curriculum (state.resumed_config)
        config = resumed_config(run_dir, config, CONFIG_TOML)
    else:
        config = config or TrainConfig()
        if step_directories(run_dir / CHECKPOINTS):  # damaged ones count too
            raise VRDataError(run_dir, "already holds checkpoints: resume it with --resume, or choose another --out")
    rank, world_size, device = setup_distributed(config.train.device)
    try:
        with lock_run_dir(run_dir, rank), StopRequests(run_dir, world_size) as stop:   # a signal from here on stops after a step
            run, resume_point = set_up(location(store_path), run_dir, config, resume, rank, world_size, device)
            stop.run = run
            if init is not None and resume_point is None:
                init_weights(run, init, init_partial)
            prepare_model(run, resume_point)
            return train_loop(run, resume_point, stop)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# -- set-up and restore ----------------------------------------------------------------------------
def set_up(store_path: Path, run_dir: Path, config: TrainConfig, resume: bool, rank: int, world_size: int,
           device: torch.device) -> tuple[Run, ResumePoint | None]:
    """Check the store against the model, find (and read) the checkpoint to resume, write the
    run's files, open the run log and build the model. Nothing here trains."""
    set_threads(config, world_size, device)
    dtype = autocast_dtype(config.train.precision, device)
    store = open_store(store_path)
    model_config = config.model_config()
    check_store_matches_model(store, model_config, store_path)
    check_store_has_examples(config, store, store_path)  # e.g. denoise without a pretrain role
    check_crops(config, model_config, world_size)
    store_id = store_identity(store)
    mixer_first = config.mixer_config(config.curriculum[0], 1)
    normalisation = InputNormalisation.for_mixer(store_path, mixer_first.normalisation, mixer_first.stats_role)
    checkpoints_dir = run_dir / CHECKPOINTS
    point = find_resume_point(run_dir, checkpoints_dir, store_path, store_id, world_size, rank == 0) if resume else None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_unfinished(checkpoints_dir)
        atomic_write_text(run_dir / CONFIG_TOML, dump_config(config))
        atomic_write_text(run_dir / RUN_JSON, json.dumps({"store": store_name(store_path), "store_id": store_id,
                                                    "world_size": world_size}, indent=1) + "\n")
    log = RunLog(run_dir, rank == 0, config.total_steps(), config.log.progress, config.log.tensorboard,
                 resume_step=point.state.step if point else None)
    train_cfg = config.train
    model = build_model(model_config, train_cfg.seed, config.model.gradient_checkpointing).to(device)
    run = Run(config=config, run_dir=run_dir, store_path=store_path, store=store, store_id=store_id,
              normalisation=normalisation, rank=rank, world_size=world_size, device=device, autocast_dtype=dtype,
              log=log, model=model, optimizer=None, scaler=None, ema=None,
              freeze_plan=FreezePlan(train_cfg.freeze, train_cfg.unfreeze_after or None), frozen=False)
    return run, point


def init_weights(run: Run, init, partial: bool) -> None:
    """`--init`: a checkpoint's weights into the fresh model (its config.json read once)."""
    report = init_from_checkpoint(run.model, init, partial=partial)
    check_init_stft(report.document, report.checkpoint, run.store, partial)
    run.log.line(f"init: {len(report.loaded)} tensors from {report.checkpoint}"
                 + (f"; not loaded: {', '.join(report.missing)}" if report.missing else "")
                 + (f"; not in this model: {', '.join(report.unexpected)}" if report.unexpected else "")
                 + (f"; new head ({report.head}): {', '.join(report.new_head)}" if report.new_head else ""))


def prepare_model(run: Run, point: ResumePoint | None) -> None:
    """Freeze as the plan says for the last step done, make the optimizer, scaler and EMA, seed
    dropout, restore `point` if resuming, wrap the model, and make the validator."""
    config, train_cfg, model = run.config, run.config.train, run.model
    done = max((point.state.step if point else 0) - 1, 0)     # 0-based: the last step done
    run.frozen = run.freeze_plan.frozen_at(done)
    counts = apply_plan(model, run.freeze_plan, done)
    until = f" for steps 1-{run.freeze_plan.unfreeze_after}" if run.freeze_plan.unfreeze_after else ""
    run.log.line(f"parameters: {counts}" + (f" ({run.freeze_plan.part} frozen{until})" if run.frozen else ""))
    run.optimizer = make_optimizer(model, train_cfg, run.device, run.freeze_plan, done)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.autocast_dtype == torch.float16)
    run.ema = ExponentialMovingAverage(model, train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None
    torch.manual_seed(train_cfg.seed * 1000 + 1 + run.rank)  # dropout: a stream per rank
    if point is not None:
        restore(run, point)
    else:
        run.log.line(f"run: {model.num_parameters():,} parameters, {config.total_steps()} steps in "
                     f"{len(config.curriculum)} stage(s), {run.world_size} process(es) on {run.device}, "
                     f"store {run.store_path}")
    wrap_model(run)
    run.validator = make_validator(run) if run.writer else None
    run.has_validation = _broadcast(run.validator is not None, run.world_size)


def restore(run: Run, point: ResumePoint) -> None:
    """Weights, EMA, optimizer, scaler, RNG states and counters of the resumed checkpoint."""
    state = point.state
    with torch.no_grad():
        own = run.model.state_dict()
        for name, tensor in load_weights(point.directory / WEIGHTS, run.device).items():
            own[name].copy_(tensor)
    if run.ema is not None:
        run.ema.load(load_weights(point.directory / EMA_WEIGHTS, run.device), state.counters.get("ema_updates", 0))
    run.optimizer.load_state_dict(state.optimizer)
    run.scaler.load_state_dict(state.scaler)
    resume_rng(state.rng, run.rank, run.world_size, run.config.train.seed, state.step, run.device)
    set_host_rng_state(state.host_rng)
    run.state = RunState.restored(state)
    run.last_checkpoint = point.directory
    saved_ranks = len(state.loaders)
    run.log.line(f"resumed from {point.directory.name}: step {run.state.step}/{run.config.total_steps()}"
                 + (f" (checkpointed at {saved_ranks} rank(s), now {run.world_size})"
                    if saved_ranks != run.world_size else ""))


def wrap_model(run: Run) -> None:
    """What the objective calls: the model, compiled and/or in DDP (which registers the
    parameters that need gradients when it wraps, so unfreezing wraps again)."""
    train_model = torch.compile(run.model) if run.config.model.compile else run.model
    if run.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.train_model = train_model
    run.parameters = [p for p in run.model.parameters() if p.requires_grad]


def make_validator(run: Run) -> Validator | None:
    """Rank 0's validator over fixed crops of the valid split (None: the store has none)."""
    config = run.config
    kind = validation_kind(run.store, objective=config.train.objective)
    if kind is None:
        run.log.line("validation: the store has no valid items (pairs, or vocals and instrumentals); no validation")
        return None
    mixer = validation_mixer_config(config.mixer_config(config.curriculum[0], 1), config.validation_crop_frames(),
                                    config.validation.batch_size)
    crops = FixedCrops(run.store_path, mixer, kind, config.validation.crops_per_track)
    run.log.line(f"validation: {crops.real_examples} fixed {kind} crops of {config.validation_crop_frames()} "
                 f"frames from the valid split")
    return Validator(crops, config.model_config(), OBJECTIVES[config.train.objective], config, run.device,
                     run.autocast_dtype, run.normalisation, notice=run.log.line)


# -- the loop --------------------------------------------------------------------------------------
def train_loop(run: Run, point: ResumePoint | None, stop: StopRequests) -> RunSummary:
    """Steps until the curriculum's end: each one trains, then logs, validates and checkpoints
    when due. Stops early, after a checkpoint, on too many non-finite steps or on a signal."""
    config, state = run.config, run.state
    total_steps, start_step = config.total_steps(), state.step
    feed: Feed | None = None
    interval, losses, means = Interval(), [], []       # per step, and per log interval, of this run
    data_wait = 0.0
    run_started = last_saved = time.perf_counter()
    every_seconds = 60.0 * config.checkpoint.every_minutes
    run.ledger = ExampleLedger(run.run_dir, config.log.examples, run.writer, state.step)
    try:
        while state.step < total_steps:
            feed = next_feed(run, feed, point)
            state.step += 1
            step = state.step
            maybe_unfreeze(run, step)
            lr = learning_rate(step, total_steps, config.train.lr, config.train.min_lr, config.train.warmup_steps,
                               config.train.decay, config.train.decay_power)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            data_wait += train_step(run, feed, step, interval)

            stage_end = step == config.stage_start(feed.index) + feed.stage.steps
            clock_due = every_seconds > 0 and run.writer and time.perf_counter() - last_saved >= every_seconds
            signalled, clock_due = agree((stop.received is not None, clock_due), run.world_size, run.device)
            interrupted = signalled and step < total_steps
            if step % config.log.every == 0 or stage_end or step == total_steps or interrupted:
                record, pairs = log_interval(run, feed, step, lr, interval)
                losses += pairs
                means += [record["loss"]] if record["loss"] is not None else []
                interval = Interval()
            new_best = validate(run, feed.index, step, stage_end or step == total_steps)
            stopping = state.nonfinite_streak >= config.train.max_nonfinite
            if (step % config.checkpoint.every == 0 or stage_end or step == total_steps or new_best is not None
                    or stopping or interrupted or clock_due):
                save(run, feed, new_best)
                last_saved = time.perf_counter()
            if stopping:
                stop_on_nonfinite(run, step)
            if interrupted:
                stop_on_signal(run, step, stop.received)
    finally:
        if feed is not None:
            feed.loader.close()   # its worker processes end here, on a stop too
        run.ledger.close()
    summary = RunSummary(
        run_dir=run.run_dir, steps=state.step, steps_this_run=state.step - start_step, examples=state.examples,
        seconds=time.perf_counter() - run_started, data_wait_seconds=data_wait,
        first_loss=means[0] if means else None, last_loss=means[-1] if means else None,
        best_valid_loss=state.best_valid_loss, nonfinite_steps=state.nonfinite_steps,
        last_checkpoint=run.last_checkpoint, losses=losses,
    )
    run.log.line(summary_line(summary))
    run.log.close()
    return summary


def next_feed(run: Run, feed: Feed | None, point: ResumePoint | None) -> Feed:
    """The feed for the next step: the current one, or a new stage's loader (its crop length and
    batch) starting at the next epoch."""
    config = run.config
    index = config.stage_at(run.state.step + 1)
    if feed is not None and feed.index == index:
        return feed
    if feed is not None:
        position = {"epoch": feed.loader.state_dict()["epoch"] + 1, "batch": 0}
        feed.loader.close()
    elif point is not None:
        position = resume_position(point.state.loaders, run.rank)
        if point.state.stage != index:                      # saved at a stage's end
            position = {"epoch": position["epoch"] + 1, "batch": 0}
    else:
        position = None
    stage = config.curriculum[index]
    per_rank, accumulation = rank_batching(stage, run.world_size)
    loader = make_loader(run.store_path, config, index, per_rank, run.rank, run.world_size, run.device, position)
    model_config = run.model.config
    start = config.stage_start(index)
    run.log.line(f"stage {index + 1}/{len(config.curriculum)}: {stage.crop_frames} frames, {per_rank} examples x "
                 f"{accumulation} accumulation x {run.world_size} rank(s) per step, steps {start + 1}-{start + stage.steps}")
    return Feed(index, stage, per_rank, accumulation, loader, _endless(loader),
                nominal_elements(stage, model_config.in_channels, model_config.bins + 1))


def maybe_unfreeze(run: Run, step: int) -> None:
    """At the plan's step: the frozen part trains again, as new optimizer groups."""
    if not run.frozen or run.freeze_plan.frozen_at(step - 1):
        return
    counts = unfreeze_into(run.optimizer, run.model, run.freeze_plan,
                           lambda params: parameter_groups(run.model, run.config.train.weight_decay, params))
    if run.world_size > 1:
        wrap_model(run)
    else:
        run.parameters = [p for p in run.model.parameters() if p.requires_grad]
    run.frozen = False
    run.log.line(f"step {step}: {run.freeze_plan.part} unfrozen; {counts}")


def train_step(run: Run, feed: Feed, step: int, interval: Interval) -> float:
    """One optimizer step: forward and scaled backward over the micro-batches (gradients sync on
    the last only), rescale to the global mean, clip, then step and update the EMA, or skip the
    step if the loss or gradient is not finite. Returns the seconds spent waiting for data."""
    started = time.perf_counter()
    error_sum = torch.zeros((), device=run.device)
    count = torch.zeros((), device=run.device)
    waited = 0.0
    records: list[dict] = []  # the ledger's records of this rank's examples of the step
    for micro in range(feed.accumulation):
        before = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # a DataLoader draws its seed from torch's RNG
            batch = next(feed.batches)
        waited += time.perf_counter() - before
        records += batch.pop("examples", [])
        batch = {k: v.to(run.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        terms = micro_step(run, feed, batch, StepContext(step, micro, run.rank, run.world_size))
        error_sum += terms.error_sum.detach()
        count += terms.count.detach()
        del batch, terms  # the loader may reuse the batch's buffers from here on
    totals = torch.stack([error_sum, count])
    if run.world_size > 1:
        dist.all_reduce(totals)
    loss = totals[0] / totals[1].clamp_min(1)
    run.scaler.unscale_(run.optimizer)
    # gradients of the sum -> of the mean: nominal / count in float64, rounded once to float32
    factor = (feed.nominal / totals[1].double().clamp_min(1)).float()
    torch._foreach_mul_([p.grad for p in run.parameters if p.grad is not None], factor)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.parameters, run.config.train.grad_clip or math.inf)
    finite = bool(torch.isfinite(loss) & (torch.isfinite(grad_norm) | run.scaler.is_enabled()))  # the step's host read
    apply_step(run, step, finite, loss, grad_norm)
    run.optimizer.zero_grad(set_to_none=True)
    run.ledger.add(step, feed.loader.epoch, records, run.world_size)  # a collective: every rank, every step
    run.state.examples += feed.stage.batch_size * feed.stage.accumulation
    if finite:
        interval.add(step, loss, grad_norm)
    interval.examples += feed.stage.batch_size * feed.stage.accumulation
    interval.data_wait += waited
    interval.seconds += time.perf_counter() - started
    return waited


def micro_step(run: Run, feed: Feed, batch: dict, context: StepContext):
    """Forward and scaled backward of one micro-batch -> its `LossTerms`."""
    sync = run.world_size > 1 and context.micro < feed.accumulation - 1
    no_sync = run.train_model.no_sync() if sync and hasattr(run.train_model, "no_sync") else contextlib.nullcontext()
    try:
        with no_sync:
            terms = forward_terms(OBJECTIVES[run.config.train.objective], run.train_model, batch, run.config, context,
                                  run.autocast_dtype)
            # DDP averages gradients over ranks: x world_size makes that a sum.
            run.scaler.scale(terms.error_sum * (run.world_size / feed.nominal)).backward()
    except torch.cuda.OutOfMemoryError:
        raise VRDataError(None, f"CUDA out of memory in stage {feed.index + 1} ({feed.stage.crop_frames} frames, "
                                f"{feed.per_rank} examples per forward pass): lower curriculum.{feed.index}.batch_size "
                                f"and raise its accumulation by the same factor (the global batch stays), or set "
                                f"model.gradient_checkpointing = true") from None
    return terms


def apply_step(run: Run, step: int, finite: bool, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Step the optimizer and the EMA, or count a skipped step (and say why)."""
    state = run.state
    if finite:
        run.scaler.step(run.optimizer)   # with fp16 the scaler itself skips steps whose gradients overflowed
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
            state.ema_updates = run.ema.updates
        state.nonfinite_streak = 0
        return
    if run.scaler.is_enabled():
        run.scaler.update()
    state.nonfinite_steps += 1
    state.nonfinite_streak += 1
    loss_value, norm_value = float(loss), float(grad_norm)
    run.log.line(f"step {step}: non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'} "
                 f"({loss_value} / grad norm {norm_value}); step skipped "
                 f"({state.nonfinite_streak} in a row, {state.nonfinite_steps} in total)")


def log_interval(run: Run, feed: Feed, step: int, lr: float, interval: Interval) -> tuple[dict, list]:
    """The interval's metrics record and progress line (its losses read from the device here)."""
    record, pairs = interval.record(step, feed.index, lr, feed.loader.state_dict()["epoch"])
    record["examples"] = run.state.examples
    record["nonfinite_steps"] = run.state.nonfinite_steps
    run.log.record(record)
    remaining = (run.config.total_steps() - step) * record["seconds_per_step"]
    run.log.progress(step, f"{feed.index + 1}/{len(run.config.curriculum)}", record["loss"], lr,
                     record["examples_per_s"], record["data_wait"], remaining)
    return record, pairs


def validate(run: Run, stage: int, step: int, end: bool) -> float | None:
    """Validate when due (rank 0 computes, every rank gets the loss); returns the loss if it is
    the run's best so far (recorded in `RunState`), else None."""
    every = run.config.validation.every
    if not run.has_validation or not (end or (every and step % every == 0)):
        return None
    valid_loss = None
    if run.writer:
        ema = run.ema is not None and run.config.validation.weights == "ema"
        record = run.validator.run(run.ema.state_dict() if ema else run.model.state_dict())
        valid_loss = record["valid_loss"]
        run.log.record({"kind": "valid", "step": step, "stage": stage, **record})
        sdr = (f", SDR {record['valid_sdr']:.2f} dB (floor {record['valid_sdr_floor']:.2f}, ceiling "
               f"{record['valid_sdr_ceiling']:.2f}) on {record['valid_sdr_songs']} song(s)"
               if "valid_sdr" in record else "")
        run.log.line(f"step {step}: valid loss {format_loss(valid_loss)}{sdr}")
    valid_loss = _broadcast(valid_loss, run.world_size)
    if run.state.best_valid_loss is not None and not valid_loss < run.state.best_valid_loss:
        return None
    run.state.best_valid_loss = valid_loss
    return valid_loss


def save(run: Run, feed: Feed, improved_loss: float | None) -> None:
    """A checkpoint of the step just done (rank 0 writes; every rank contributes its loader
    position and RNG state); `improved_loss`: the new best validation loss, if this step set it."""
    state = run.state
    training_state = TrainingState(
        step=state.step, stage=feed.index, loaders=_gather(feed.loader.state_dict(), run.world_size),
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(),
        rng=_gather(rng_state(run.device), run.world_size), counters=state.counters(), host_rng=host_rng_state(),
    )
    if run.writer:
        run.ledger.sync()  # the ledger's lines up to this checkpoint are durable before it is
        extra = checkpoint_extra(run.config, run.store, run.store_id, run.normalisation, state.step, feed.index,
                                 feed.loader)
        run.last_checkpoint = save_training_checkpoint(run.checkpoints_dir, run.model,
                                                       run.ema.state_dict() if run.ema else None, extra, training_state)
        if improved_loss is not None:
            write_best(run.checkpoints_dir, run.last_checkpoint, state.step, improved_loss)
        prune_checkpoints(run.checkpoints_dir, run.config.checkpoint.keep)
    if run.world_size > 1:
        dist.barrier()


def stop_on_nonfinite(run: Run, step: int) -> None:
    limit = run.config.train.max_nonfinite
    run.log.line(f"stopped: {limit} steps in a row had a non-finite loss or gradient (step {step}); saved "
                 f"{run.last_checkpoint}. Lower train.lr, check the data (`vrdata verify`), or use precision fp32.")
    run.log.close()
    raise TrainingStopped(run.run_dir, f"stopped after {limit} non-finite steps in a row at step {step}; "
                                       f"the last checkpoint is {run.last_checkpoint}")


def stop_on_signal(run: Run, step: int, signal_name: str) -> None:
    message = (f"interrupted by {signal_name} at step {step}/{run.config.total_steps()}; saved {run.last_checkpoint}; "
               f"resume with: {resume_command(run.run_dir, run.world_size)}")
    run.log.line(message)
    run.log.close()
    raise TrainingInterrupted(message, signal_name, saved=True)


def _endless(loader: MixerLoader):
    while True:
        yield from loader


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
        parts.append(f"loss {format_loss(summary.first_loss)} -> {format_loss(summary.last_loss)}")
    if summary.best_valid_loss is not None:
        parts.append(f"best valid loss {format_loss(summary.best_valid_loss)}")
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
