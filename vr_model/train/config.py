"""The training config: one TOML file, typed sections, a comment per key, dotted overrides.

Each section is a pydantic model that declares every key's type, default, bounds and one-line
help, so a value `vrtrain config` accepts is one `vrtrain run` can run. `default_config()` is
every default; `load_config(path, overrides)` reads a TOML file (any key left out keeps its
default), applies `--set` style overrides (`"train.lr=3e-4"`, `"curriculum.0.steps=200"`,
`"model.overrides.channels=[8, 8, 12, 12, 16]"`) and validates the result; a bad key or value
is a one-line `ConfigError` naming the key and what it allows. `dump_config(config)` writes
TOML with a comment above every key (tomlkit; what `vrtrain config` prints, and what a run
saves as `RUN_DIR/config.toml`); `load_config` of that text gives the same config back.

Sections: `model`, `data`, `mixer`, `train`, `curriculum` (a list of stages), `checkpoint`,
`validation`, `log`, `denoise`. `mixer` holds `vr_data.mixer.MixerConfig`'s options except
those the curriculum sets (crop_frames, batch_size) and the split. TOML has no null: a `0`
stands for "automatic" where the mixer takes `None`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vr_data.errors import ConfigError, VRDataError
from vr_data.mixer import MixerConfig
from vr_data.mixer.config import PRETRAIN_SOURCES
from vr_data.mixer.sampling import KINDS
from vr_data.store.format import ROLE_SOURCES
from vr_model.network.config import FramePrimerConfig

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def _key(default: Any, help: str, **bounds: Any) -> Any:
    """A config key: its default, a one-line comment and its bounds (pydantic `Field`)."""
    if isinstance(default, (list, dict)):
        value = default
        return Field(default_factory=lambda: type(value)(value), description=help, **bounds)
    return Field(default=default, description=help, **bounds)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """A config table: unknown keys refused, types strict (an int is not a bool), finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True)

    def to_dict(self) -> dict:
        return self.model_dump()


class ModelSection(Section):
    preset: str = _key("frame-primer", "model preset (`vrtrain presets`): frame-primer, tiny")
    overrides: dict[str, Any] = _key({}, "FramePrimerConfig fields replacing the preset's, "
                                         "e.g. channels = [8, 8, 12, 12, 16]")
    gradient_checkpointing: bool = _key(False, "recompute each level in backward: less activation memory, "
                                               "~1/3 more compute")
    compile: bool = _key(False, "torch.compile the model (CUDA; the first steps are slow while it compiles)")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from vr_model.network.presets import PRESETS

        if value not in PRESETS:
            raise ValueError(f"must be one of {', '.join(PRESETS)}")
        return value

    @field_validator("overrides")
    @classmethod
    def _known_fields(cls, value: dict) -> dict:
        fields = FramePrimerConfig.__dataclass_fields__
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise _KeyProblem(f"model.overrides.{unknown[0]}", f"unknown key, not a FramePrimerConfig field "
                                                               f"({', '.join(fields)})")
        channels = value.get("channels")
        if channels is not None and (not isinstance(channels, list)
                                     or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0
                                                for c in channels)):
            raise _KeyProblem("model.overrides.channels", f"must be a list of integers > 0 (one per level), "
                                                          f"got {channels!r}")
        return value


class DataSection(Section):
    backend: Literal["zarr", "wds"] = _key("zarr", "mixer backend: zarr (random access) or wds (WebDataset streaming)")
    workers: int = _key(1, "DataLoader worker processes per rank (0: batches are made in the training process)", ge=0)
    prefetch_factor: int = _key(2, "batches each worker keeps ready", ge=1)
    reuse_outputs: bool = _key(True, "recycle a ring of batch buffers (2x faster loading; the loop never holds a "
                                     "batch long)")
    wds_buffer: int = _key(16, "WebDataset backend: crop shuffle buffer per stream", ge=1)


class MixerSection(Section):
    """How examples are made (`vr_data.mixer.MixerConfig`; docs/mixer.md), less what the
    curriculum and the split decide. `0` means None for the two automatic keys."""

    seed: int = _key(0, "seed of the epoch plans and of every random choice of every example", ge=0)
    proportions: dict[str, Annotated[float, Field(ge=0.0)]] = _key(
        {"pair": 0.5, "augmented": 0.5, "pretrain": 0.0},
        "share of each example kind (weights >= 0, positive sum): pair, augmented (instrumental + vocal), pretrain")
    instrumental_sources: list[Literal["instrumental", "pair"]] = _key(
        ["instrumental", "pair"], "where augmented mixes take instrumentals from: instrumental, pair")
    pretrain_sources: list[Literal[PRETRAIN_SOURCES]] = _key(  # type: ignore[valid-type]
        ["pretrain"], "the pretrain kind's library: pretrain, and optionally pair_mixture, pair_instrumental, "
                      "instrumental", min_length=1)
    vocal_probability: Probability = _key(0.98, "an augmented example gets a vocal (else it is vocal-free)")
    swap_probability: Probability = _key(0.5, "left/right swap (drawn for the instrumental and the vocal separately)")
    vocal_channel_drop_probability: Probability = _key(0.025, "one vocal channel zeroed")
    instrumental_only_probability: Probability = _key(0.025, "mixture replaced by its instrumental "
                                                             "(target = mixture)")
    vocal_gain_db: list[float] = _key([-6.0, 3.0], "uniform vocal gain range in dB: [low, high], low <= high",
                                      min_length=2, max_length=2)
    polarity_flip_probability: Probability = _key(0.5, "the vocal's polarity is inverted")
    mono_probability: Probability = _key(0.02, "mixture and target folded to mono")
    silence_dbfs: float = _key(-50.0, "crops under this RMS level (dBFS) are near-silent", le=0.0)
    silence_rule: Literal["resample", "count", "keep"] = _key("resample", "near-silent crops: resample, count or keep")
    max_resamples: int = _key(4, "redraws of a near-silent crop before it is kept", ge=0)
    normalisation: Literal["crop_max", "stats", "none"] = _key(
        "crop_max", "model input scaling: crop_max, stats (STORE/stats.json) or none; recorded in checkpoints")
    stats_role: Literal[tuple(ROLE_SOURCES)] = _key(  # type: ignore[valid-type]
        "pair", "stats normalisation: whose statistics (pair = pairs' mixtures)")
    examples_per_epoch: int = _key(0, "examples per epoch (0: enough to use every crop of the largest library once)",
                                   ge=0)
    vocal_offset_step: int = _key(0, "vocal crop offsets are multiples of this many frames (0: any frame)", ge=0)

    @field_validator("proportions")
    @classmethod
    def _kinds_and_sum(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown example kind {unknown[0]!r} (kinds: {', '.join(KINDS)})")
        if not sum(value.values()) > 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {value}")
        return value

    @field_validator("vocal_gain_db")
    @classmethod
    def _ordered(cls, value: list) -> list:
        if value[0] > value[1]:
            raise ValueError(f"must be [low, high] with low <= high, got {value}")
        return value


_MIXER_EXCLUDED = ("crop_frames", "batch_size", "split")   # the curriculum and the split decide these
_MIXER_NULLABLE = ("examples_per_epoch", "vocal_offset_step")  # None <-> 0 in TOML


class TrainSection(Section):
    objective: str = _key(
        "supervised", "what the model learns: supervised (mask x mixture -> instrumental) or denoise (predict the "
                      "noise added to a pretraining crop; [denoise])")
    loss: Literal["l1", "l2"] = _key("l2", "mask x mixture vs target over valid frames: l2, or l1 (stays at mask 1 "
                                           "longer)")
    lr: float = _key(1e-4, "peak learning rate (AdamW), reached after the warmup", gt=0.0)
    min_lr: float = _key(1e-6, "the floor the decay ends at, on the last step (0 <= min_lr <= lr)", ge=0.0)
    warmup_steps: int = _key(1000, "linear warmup from 0 to lr over this many steps (fewer than the run's steps)",
                             ge=0)
    decay: Literal["polynomial", "cosine"] = _key("polynomial", "after the warmup: polynomial or cosine decay to "
                                                                "min_lr")
    decay_power: float = _key(1.0, "polynomial decay power (1: linear)", gt=0.0)
    weight_decay: float = _key(0.01, "AdamW weight decay (matrices and convolutions only)", ge=0.0)
    beta1: float = _key(0.9, "AdamW beta1", ge=0.0, lt=1.0)
    beta2: float = _key(0.999, "AdamW beta2", ge=0.0, lt=1.0)
    eps: float = _key(1e-8, "AdamW epsilon", gt=0.0)
    grad_clip: float = _key(1.0, "clip the global gradient norm to this (0: no clipping)", ge=0.0)
    ema_decay: float = _key(0.999, "EMA of the weights (0: no EMA); saved, used for validation", ge=0.0, lt=1.0)
    seed: int = _key(0, "seed of the weights' initialisation and of dropout", ge=0)
    device: str = _key("auto", "auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _key("auto", "auto (bf16 on CUDA, fp32 on CPU), fp32, "
                                                                      "bf16, fp16")
    max_nonfinite: int = _key(8, "stop (after saving) when this many steps in a row have a non-finite loss or "
                                 "gradient", ge=1)
    threads: int = _key(0, "torch CPU threads (0: on the CPU, the cores per rank minus its loader workers)", ge=0)
    freeze: Literal["none", "encoders"] = _key("none", "frozen part while finetuning: none or encoders (no "
                                                       "gradients, eval mode)")
    unfreeze_after: int = _key(0, "train the frozen part again after this many steps (0: frozen for the whole run)",
                               ge=0)

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str) -> str:
        from vr_model.train.objectives import OBJECTIVES

        if value not in OBJECTIVES:
            raise ValueError(f"must be one of {', '.join(OBJECTIVES)}, not {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if value in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
            return value
        raise ValueError(f"must be {DEVICE_HELP}, not {value!r}")

    @model_validator(mode="after")
    def _floor_below_peak(self) -> "TrainSection":
        if self.min_lr > self.lr:
            raise _KeyProblem("train.min_lr", f"{self.min_lr} must be <= train.lr {self.lr}")
        return self


class DenoiseSection(Section):
    """train.objective = "denoise" (vr_model.train.denoise; docs/training.md)."""

    gamma: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = _key(
        [0.95, 0.95], "[low, high], 0 < low <= high < 1: each example's gamma in x_t = sqrt(g) x + sqrt(1 - g) eps "
                      "(equal: fixed; SNR = g / (1 - g))", min_length=2, max_length=2)
    domain: Literal["log", "magnitude"] = _key("log", "where the noise is added: log (standardised log magnitude) "
                                                      "or magnitude")
    noise_scale: float = _key(1.0, "factor on eps in x_t (the seed's fork: 0.2 in the magnitude domain)", gt=0.0)
    loss: Literal["l1", "l2"] = _key("l2", "distance between the predicted and the true noise: l2 (the paper) or l1")
    floor_db: float = _key(-100.0, "log domain: floor below the crop's peak (dB) that keeps ln finite", lt=0.0)

    @field_validator("gamma")
    @classmethod
    def _ordered(cls, value: list) -> list:
        if value[0] > value[1]:
            raise ValueError(f"must be [low, high] with low <= high, got {value}")
        return value


class Stage(Section):
    crop_frames: int = _key(512, "frames per crop (at most the model's max_frames)", ge=1)
    batch_size: int = _key(4, "examples per forward pass, all ranks together", ge=1)
    accumulation: int = _key(4, "forward passes per optimizer step", ge=1)
    steps: int = _key(100_000, "optimizer steps in this stage", ge=1)

    def __init__(self, crop_frames: int = 512, batch_size: int = 4, accumulation: int = 4, steps: int = 100_000,
                 **values: Any):
        super().__init__(crop_frames=crop_frames, batch_size=batch_size, accumulation=accumulation, steps=steps,
                         **values)


def _seed_curriculum() -> list[Stage]:
    # The seed's 512 -> 1024 -> 2048 frames (about 12, 24, 48 s), same global batch (16).
    return [Stage(512, 4, 4, 100_000), Stage(1024, 2, 8, 50_000), Stage(2048, 1, 16, 25_000)]


class CheckpointSection(Section):
    every: int = _key(1000, "save a checkpoint every this many steps (and at the end of every stage)", ge=1)
    every_minutes: float = _key(0.0, "also save one when this many minutes passed since the last (0: off)", ge=0.0)
    keep: int = _key(3, "keep the last this many checkpoints (the best by validation is kept too)", ge=1)


class ValidationSection(Section):
    every: int = _key(1000, "validate every this many steps (0: only at the end)", ge=0)
    crop_frames: int = _key(0, "frames per validation crop (0: the first stage's crop_frames)", ge=0)
    crops_per_track: int = _key(4, "fixed crops per valid track, evenly spaced", ge=1)
    batch_size: int = _key(8, "validation examples per forward pass", ge=1)
    weights: Literal["ema", "raw"] = _key("ema", "validate the ema weights (where kept) or the raw weights")
    sdr_songs: int = _key(0, "also SDR on this many full valid songs (0: off)", ge=0)


class LogSection(Section):
    every: int = _key(10, "a progress line and a metrics record every this many steps", ge=1)
    tensorboard: bool = _key(True, "write TensorBoard event files to RUN_DIR/tensorboard")
    progress: Literal["auto", "rich", "plain"] = _key("auto", "auto (rich on a terminal, plain lines otherwise), "
                                                              "rich or plain")
    examples: bool = _key(False, "write RUN_DIR/examples.jsonl: every step's example indices, tracks, offsets, gains")


class _Schema(Section):
    """The whole file's shape: one section per TOML table (validated by pydantic)."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    mixer: MixerSection = Field(default_factory=MixerSection)
    train: TrainSection = Field(default_factory=TrainSection)
    curriculum: list[Stage] = Field(default_factory=_seed_curriculum, min_length=1)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    log: LogSection = Field(default_factory=LogSection)
    denoise: DenoiseSection = Field(default_factory=DenoiseSection)

    @model_validator(mode="before")
    @classmethod
    def _denoise_proportions(cls, record: Any) -> Any:
        # The supervised kinds' default makes no sense for pretraining: its crops come from `pretrain`.
        if isinstance(record, dict) and isinstance(record.get("train"), dict) \
                and record["train"].get("objective") == "denoise":
            mixer = record.get("mixer", {})
            if isinstance(mixer, dict) and mixer.get("proportions", MixerSection().proportions) \
                    == MixerSection().proportions:
                record = {**record, "mixer": {**mixer, "proportions": {"pair": 0.0, "augmented": 0.0,
                                                                       "pretrain": 1.0}}}
        return record


@dataclass
class TrainConfig:
    """Every setting of a run: the validated sections (pydantic models) and what follows from
    them. Build one with `load_config` / `config_from_dict` (which check every bound);
    `TrainConfig()` is the defaults."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    mixer: MixerSection = field(default_factory=MixerSection)
    train: TrainSection = field(default_factory=TrainSection)
    curriculum: list[Stage] = field(default_factory=_seed_curriculum)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    log: LogSection = field(default_factory=LogSection)
    denoise: DenoiseSection = field(default_factory=DenoiseSection)

    def check(self) -> None:
        """Cross-key bounds (a `_KeyProblem` naming the key): the head follows the objective,
        crops within the model's `max_frames`, loader buffers within this machine's memory."""
        head = self.model.overrides.get("head")
        if head is not None and head != ("linear" if self.train.objective == "denoise" else "mask"):
            raise _KeyProblem("model.overrides.head", f"{head!r} contradicts train.objective = "
                              f"{self.train.objective!r} (the head follows the objective: mask for supervised, "
                              f"linear for denoise)")
        try:
            model = self.model_config()
        except (ConfigError, TypeError, ValueError) as error:
            raise _KeyProblem("model.overrides", getattr(error, "reason", str(error))) from None
        for index, stage in enumerate(self.curriculum):
            if stage.crop_frames > model.max_frames:
                raise _KeyProblem(f"curriculum.{index}.crop_frames",
                                  f"{stage.crop_frames} exceeds the model's max_frames {model.max_frames} "
                                  f"(allowed: 1 to {model.max_frames})")
        if self.validation_crop_frames() > model.max_frames:
            raise _KeyProblem("validation.crop_frames", f"{self.validation_crop_frames()} exceeds the model's "
                              f"max_frames {model.max_frames} (allowed: 0 to {model.max_frames})")
        check_batch_memory(self, model)

    def to_dict(self) -> dict:
        return {name: ([stage.to_dict() for stage in value] if name == "curriculum" else value.to_dict())
                for name, value in ((item.name, getattr(self, item.name)) for item in dataclasses.fields(self))}

    # -- derived values ----------------------------------------------------------------------------
    def model_config(self) -> FramePrimerConfig:
        """The preset with `model.overrides` applied (unknown fields are an error)."""
        from vr_model.network.presets import get_config

        # The head follows the objective: a sigmoid mask, or the unbounded noise prediction.
        head = "linear" if self.train.objective == "denoise" else "mask"
        return FramePrimerConfig.from_dict({**get_config(self.model.preset).to_dict(), **self.model.overrides,
                                            "head": head})

    def denoise_config(self):
        """The `[denoise]` section as a `vr_model.train.denoise.DenoiseConfig`."""
        from vr_model.train.denoise import DenoiseConfig

        return DenoiseConfig(**{**self.denoise.model_dump(), "gamma": tuple(self.denoise.gamma)})

    def mixer_config(self, stage: Stage, per_rank_batch: int, split: str = "train") -> MixerConfig:
        values = self.mixer.model_dump()
        for name in _MIXER_NULLABLE:
            values[name] = values.get(name) or None
        return MixerConfig.from_dict({**values, "crop_frames": stage.crop_frames, "batch_size": per_rank_batch,
                                      "split": split})

    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.curriculum)

    def stage_at(self, step: int) -> int:
        """Index of the stage that optimizer step `step` (1-based) belongs to."""
        end = 0
        for index, stage in enumerate(self.curriculum):
            end += stage.steps
            if step <= end:
                return index
        return len(self.curriculum) - 1

    def stage_start(self, index: int) -> int:
        """Optimizer steps done before stage `index` begins."""
        return sum(stage.steps for stage in self.curriculum[:index])

    def validation_crop_frames(self) -> int:
        return self.validation.crop_frames or self.curriculum[0].crop_frames

    def warnings(self) -> list[str]:
        """Settings that run but are probably not meant (printed by `vrtrain run`, commented
        by `vrtrain config`)."""
        notes = []
        if self.train.warmup_steps > self.total_steps():
            notes.append(f"train.warmup_steps {self.train.warmup_steps} is more than the run's "
                         f"{self.total_steps()} steps: the learning rate never reaches train.lr "
                         f"(at most {self.train.lr * self.total_steps() / self.train.warmup_steps:.3g})")
        return notes


class _KeyProblem(ValueError):
    """A cross-key bound that failed: `key` names it (turned into one ConfigError line)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


# -- memory ----------------------------------------------------------------------------------------
def batch_buffer_bytes(config: TrainConfig, stage: Stage, bins: int) -> int:
    """Bytes the loader allocates for one stage on one machine (all ranks of a node together).

    Per loader process (each worker, or the training process with `data.workers = 0`): the
    float16 crop buffers (main, instrumental, vocal: batch x frames x 2 channels x 2 [re, im] x
    bins each) and a ring of float32 outputs (mixture and target: batch x 2 x bins x frames
    each), `prefetch_factor + 2` deep with workers, 2 without (`MixerLoader(reuse_outputs=...)`).
    """
    per_batch_crops = 3 * stage.batch_size * stage.crop_frames * 2 * 2 * bins * 2
    per_batch_outputs = 2 * stage.batch_size * 2 * bins * stage.crop_frames * 4
    ring = (config.data.prefetch_factor + 2 if config.data.workers else 2) if config.data.reuse_outputs \
        else config.data.prefetch_factor + 2
    return max(1, config.data.workers) * (per_batch_crops + ring * per_batch_outputs)


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_memory(config: TrainConfig, model: FramePrimerConfig) -> None:
    """Refuse a stage whose loader buffers (`batch_buffer_bytes`) exceed this machine's memory,
    before anything is allocated, with the figure."""
    available = machine_memory_bytes()
    if available is None:
        return
    for index, stage in enumerate(config.curriculum):
        needed = batch_buffer_bytes(config, stage, model.bins + 1)
        if needed > available:
            raise _KeyProblem(f"curriculum.{index}.batch_size",
                              f"{stage.batch_size} examples of {stage.crop_frames} frames need about "
                              f"{_gib(needed)} of loader buffers ({max(1, config.data.workers)} loader process(es)), "
                              f"more than this machine's {_gib(available)} of memory; lower the batch size and raise "
                              f"curriculum.{index}.accumulation")


def _gib(count: int) -> str:
    return f"{count / 2 ** 40:.1f} TiB" if count >= 2 ** 40 else f"{count / 2 ** 30:.1f} GiB"


# -- reading and validating ------------------------------------------------------------------------
def _error_line(error: ValidationError, where: str | None) -> ConfigError:
    """The first problem of a pydantic error as one line naming the key and what it allows."""
    first = error.errors()[0]
    context = first.get("ctx") or {}
    inner = context.get("error")
    if isinstance(inner, _KeyProblem):
        return ConfigError(where, f"config key {inner.key}: {inner.reason}")
    key = ".".join(str(part) for part in first["loc"]) or "(config)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return ConfigError(where, f"unknown config key {key}")
    shown = first.get("input")
    # Our own checks (value_error) name the value already.
    value = "" if first["type"] in ("missing", "value_error") else f" (got {shown!r})"
    return ConfigError(where, f"config key {key}: {message[:1].lower() + message[1:]}{value}")


def config_from_dict(record: dict, where: str | Path | None = None) -> TrainConfig:
    """A validated `TrainConfig` from a (partial) dict; missing keys keep their defaults.
    `where`: the config file, named in errors."""
    try:
        schema = _Schema.model_validate(record)
    except ValidationError as error:
        raise _error_line(error, where) from None
    config = TrainConfig(**{name: getattr(schema, name) for name in _Schema.model_fields})
    try:
        config.check()
    except _KeyProblem as problem:
        raise ConfigError(where, f"config key {problem.key}: {problem.reason}") from None
    return config


def default_config() -> TrainConfig:
    return TrainConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=3e-4"` -> (["train", "lr"], 0.0003). The value is read as a TOML value
    (numbers, booleans, "strings", [lists], {inline tables}); anything else is a bare string."""
    if "=" not in text:
        raise ConfigError(None, f"--set needs key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".")]
    if not all(path):
        raise ConfigError(None, f"--set key {key!r} is not a dotted path")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_override(record: dict, path: list[str], value: Any) -> None:
    """Set `record[path...] = value` in a config dict; list items by index (`curriculum.1.steps`),
    and one past the end appends (`curriculum.3.steps=...` on a 3-stage curriculum adds a stage
    with the last stage's other values)."""
    node: Any = record
    for depth, part in enumerate(path[:-1]):
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if part.isdigit() and int(part) == len(node) and node and isinstance(node[-1], dict):
                node.append(dict(node[-1]))
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(None, f"--set {'.'.join(path)}: {where} is not an index of the list "
                                        f"(0..{len(node) - 1})")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise ConfigError(None, f"unknown config key {where}")
            node = node[part]
        else:
            raise ConfigError(None, f"unknown config key {'.'.join(path)} ({where} is a value, not a table)")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(None, f"--set {'.'.join(path)}: not an index of the list (0..{len(node) - 1})")
        node[int(last)] = value
    elif isinstance(node, dict):
        # model.overrides and mixer.proportions take new keys; validation names unknown ones.
        if last not in node and path[:-1] not in (["model", "overrides"], ["mixer", "proportions"]):
            raise ConfigError(None, f"unknown config key {'.'.join(path)}")
        node[last] = value
    else:
        raise ConfigError(None, f"unknown config key {'.'.join(path)}")


def read_config_file(path: str | Path) -> dict:
    """A TOML config file as a dict; unreadable, non-UTF-8 or invalid TOML is one ConfigError line."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError(path, "cannot read the config: is a directory") from None
    except OSError as error:
        raise ConfigError(path, f"cannot read the config: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, f"not a UTF-8 text file (byte {error.start}: {data[error.start]:#04x}); "
                                f"a TOML config is UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, f"not valid TOML: {error}") from None


def config_record(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The defaults, then the file's keys, then the overrides, as a dict (not yet validated)."""
    record = TrainConfig().to_dict()
    if path is not None:
        user = read_config_file(path)
        record = _merge(record, user)
    for text in overrides:
        key, value = parse_override(text)
        apply_override(record, key, value)
    return record


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the TOML file's keys, then the `key=value` overrides; validated."""
    return config_from_dict(config_record(path, overrides), path)


def _merge(defaults: dict, user: dict) -> dict:
    """The user's file over the defaults: tables merge key by key, the curriculum is replaced."""
    merged = dict(defaults)
    for name, value in user.items():
        if name in merged and isinstance(merged[name], dict) and isinstance(value, dict) and name != "curriculum":
            inner = dict(merged[name])
            inner.update(value)
            merged[name] = inner
        else:
            merged[name] = value
    return merged


# -- writing ---------------------------------------------------------------------------------------
def _help(section: type[Section], name: str) -> str:
    return section.model_fields[name].description or ""


def _table(section: Section, skip: tuple[str, ...] = ()) -> tomlkit.items.Table:
    table = tomlkit.table()
    for name in type(section).model_fields:
        if name in skip:
            continue
        table.add(tomlkit.comment(_help(type(section), name)))
        table.add(name, _toml_item(getattr(section, name)))
    return table


def _toml_item(value: Any) -> Any:
    """A value for a key line: tables inline (`proportions = {pair = 0.5, ...}`), so the
    comments stay above their keys."""
    if isinstance(value, dict):
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    return value


def dump_config(config: TrainConfig) -> str:
    """TOML text of `config`, a comment above every key; `load_config` reads it back unchanged."""
    document = tomlkit.document()
    document.add(tomlkit.comment("vrtrain run config. `vrtrain config` prints the defaults; "
                                 "`--set section.key=value`"))
    document.add(tomlkit.comment("overrides any key. Reference: docs/training.md."))
    for note in config.warnings():
        document.add(tomlkit.comment(f"warning: {note}"))
    document.add(tomlkit.nl())

    model = _table(config.model, skip=("overrides",))
    overrides = tomlkit.table()
    overrides.add(tomlkit.comment(_help(ModelSection, "overrides")))
    for key, value in config.model.overrides.items():
        overrides.add(tomlkit.comment(f"replaces the {config.model.preset} preset's {key}"))
        overrides.add(key, _toml_item(value))
    model.add("overrides", overrides)
    document.add("model", model)
    document.add("data", _table(config.data))
    document.add(tomlkit.comment("how examples are made (vr_data.mixer.MixerConfig; docs/mixer.md)"))
    document.add("mixer", _table(config.mixer))
    document.add("train", _table(config.train))
    document.add(tomlkit.comment("The curriculum: stages run in order; keep batch_size x accumulation (the global "
                                 "batch)"))
    document.add(tomlkit.comment("the same in every stage. The learning-rate schedule spans all stages."))
    stages = tomlkit.aot()
    for stage in config.curriculum:
        table = tomlkit.table()
        for name in Stage.model_fields:
            item = tomlkit.item(getattr(stage, name))
            item.comment(_help(Stage, name))
            item.trivia.comment_ws = "  "
            table.add(name, item)
        stages.append(table)
    document.add("curriculum", stages)
    for name in ("checkpoint", "validation", "log", "denoise"):
        document.add(name, _table(getattr(config, name)))
    return tomlkit.dumps(document)


__all__ = [
    "ConfigError", "TrainConfig", "Stage", "VRDataError", "config_from_dict", "dump_config", "load_config",
    "read_config_file",
]


# -- the config against a store --------------------------------------------------------------------
def check_store_has_examples(config: TrainConfig, store, store_path: str | Path) -> None:
    """Every example kind with a positive proportion has tracks to draw from in the store's
    train split; checked before the run directory is written or a loader worker starts (a
    denoising run on a store without a `pretrain` role used to die inside a worker)."""
    from vr_data.mixer.base import build_libraries

    mixer = config.mixer_config(config.curriculum[0], 1)
    libraries = build_libraries(store.tracks, mixer)
    proportions = mixer.proportions
    if proportions.get("pretrain", 0) > 0 and not libraries["pretrain"].entries:
        raise ConfigError(store_path, f"config key mixer.pretrain_sources: the store has no train tracks of "
                                      f"{', '.join(mixer.pretrain_sources)} for the pretrain examples "
                                      f"(mixer.proportions.pretrain = {proportions['pretrain']}); build the store with "
                                      f"a pretrain manifest (vrdata scan --layout pretrain), or draw from other roles: "
                                      f"--set 'mixer.pretrain_sources=[\"pair_mixture\", \"instrumental\"]'")
    for kind, what in (("pair", "pairs"), ("augmented", f"instrumentals ({', '.join(mixer.instrumental_sources)})")):
        if proportions.get(kind, 0) > 0 and not libraries[kind].entries:
            raise ConfigError(store_path, f"config key mixer.proportions.{kind}: {proportions[kind]}, but the store "
                                          f"has no train {what}; set it to 0 or use a store that has them")


# -- extending a run -------------------------------------------------------------------------------
# Settings a resumed run may change: how batches are made and shown, never what they hold
# (docs/training.md, "Elastic resume").
RESUME_SETTINGS = ("data.workers", "data.prefetch_factor", "train.threads", "log.progress")


def check_extension(saved: TrainConfig, extended: TrainConfig) -> None:
    """A resumed run may get more steps on its last stage or new stages after it, and other
    values for `RESUME_SETTINGS`; nothing else that would change what was already trained:
    anything else is a ConfigError naming the first key that differs."""
    before, after = saved.to_dict(), extended.to_dict()
    for key in RESUME_SETTINGS:
        section, name = key.split(".")
        before[section][name] = after[section][name]
    stages_before, stages_after = before.pop("curriculum"), after.pop("curriculum")
    last = len(stages_before) - 1
    rule = (f"a resumed run may only add steps to its last stage (curriculum.{last}.steps), append stages "
            f"(curriculum.{last + 1}...) or change {', '.join(RESUME_SETTINGS)}")
    key = _first_difference(before, after, "")
    if key is None and len(stages_after) < len(stages_before):
        key = f"curriculum.{len(stages_after)}"
    for index, stage in enumerate(stages_before[:len(stages_after)]):
        if key is not None:
            break
        changed = _first_difference(stage, stages_after[index], f"curriculum.{index}.")
        if changed == f"curriculum.{last}.steps" and stages_after[last]["steps"] >= stage["steps"]:
            continue
        key = changed
    if key is not None:
        raise ConfigError(None, f"--set {key} with --resume: {rule}; {key} would change what was already trained")


def _first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for name in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(name), b.get(name), f"{prefix}{name}.")
            if found is not None:
                return found
        return None
    return None if a == b else prefix.rstrip(".")
