"""The training config: one TOML file, typed sections, a comment per key, dotted overrides.

`default_config()` is every default; `load_config(path, overrides)` reads a TOML file (any key
left out keeps its default), applies `--set` style overrides (`"train.lr=3e-4"`,
`"curriculum.0.steps=200"`, `"model.overrides.channels=[8, 8, 12, 12, 16]"`) and validates the
result; an unknown key is a `VRDataError` naming it. `dump_config(config)` writes TOML with a
comment above every key (what `vrtrain config` prints, and what a run saves as
`RUN_DIR/config.toml`); `load_config` of that text gives the same config back.

Sections: `model`, `data`, `mixer`, `train`, `curriculum` (a list of stages), `checkpoint`,
`validation`, `log`. `mixer` holds `vr_data.mixer.MixerConfig`'s options except those the
curriculum sets (crop_frames, batch_size) and the split. TOML has no null: a `0` stands for
"automatic" where the mixer takes `None`.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vr_data.errors import VRDataError
from vr_data.mixer import MixerConfig
from vr_model.network.config import FramePrimerConfig

def _key(default: Any, help: str, choices: tuple | None = None):
    """A config key: its default, a one-line comment, and optionally the allowed values."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ModelSection:
    preset: str = _key("frame-primer", "model preset (`vrtrain presets`): frame-primer, tiny")
    overrides: dict = _key({}, "FramePrimerConfig fields replacing the preset's, e.g. channels = [8, 8, 12, 12, 16]")
    gradient_checkpointing: bool = _key(False, "recompute each level in backward: less activation memory, ~1/3 more compute")
    compile: bool = _key(False, "torch.compile the model (CUDA; the first steps are slow while it compiles)")


@dataclass
class DataSection:
    backend: str = _key("zarr", "mixer backend: zarr (random access) or wds (WebDataset streaming)", ("zarr", "wds"))
    workers: int = _key(1, "DataLoader worker processes per rank (0: batches are made in the training process)")
    prefetch_factor: int = _key(2, "batches each worker keeps ready")
    reuse_outputs: bool = _key(True, "recycle a ring of batch buffers (2x faster loading; the loop never holds a batch long)")
    wds_buffer: int = _key(16, "WebDataset backend: crop shuffle buffer per stream")


# Mixer options in the config: MixerConfig's fields minus what the curriculum and split decide.
_MIXER_EXCLUDED = ("crop_frames", "batch_size", "split")
_MIXER_NULLABLE = ("examples_per_epoch", "vocal_offset_step")  # None <-> 0 in TOML
MIXER_HELP = {
    "seed": "seed of the epoch plans and of every random choice of every example",
    "proportions": "share of each example kind: pair, augmented (instrumental + vocal), pretrain",
    "instrumental_sources": "where augmented mixes take instrumentals from: instrumental, pair",
    "vocal_probability": "an augmented example gets a vocal (else it is vocal-free)",
    "swap_probability": "left/right swap (drawn for the instrumental and the vocal separately)",
    "vocal_channel_drop_probability": "one vocal channel zeroed",
    "instrumental_only_probability": "mixture replaced by its instrumental (target = mixture)",
    "vocal_gain_db": "uniform vocal gain range in dB",
    "polarity_flip_probability": "the vocal's polarity is inverted",
    "mono_probability": "mixture and target folded to mono",
    "silence_dbfs": "crops under this RMS level (dBFS) are near-silent",
    "silence_rule": "near-silent crops: resample, count or keep",
    "max_resamples": "redraws of a near-silent crop before it is kept",
    "normalisation": "model input scaling: crop_max, stats (STORE/stats.json) or none; recorded in checkpoints",
    "stats_role": "stats normalisation: whose statistics (pair = pairs' mixtures)",
    "examples_per_epoch": "examples per epoch (0: enough to use every crop of the largest library once)",
    "pretrain_sources": "the pretrain kind's library: pretrain, and optionally pair_mixture, pair_instrumental, instrumental",
    "vocal_offset_step": "vocal crop offsets are multiples of this many frames (0: any frame)",
}


def _mixer_defaults() -> dict:
    record = MixerConfig().to_dict()
    for name in _MIXER_EXCLUDED:
        record.pop(name, None)
    for name in _MIXER_NULLABLE:
        if record.get(name) is None:
            record[name] = 0
    return record


@dataclass
class TrainSection:
    objective: str = _key("supervised", "what the model learns: supervised (mask x mixture -> instrumental) or "
                                        "denoise (predict the noise added to a pretraining crop; [denoise])")
    loss: str = _key("l2", "mask x mixture vs target over valid frames: l2, or l1 (stays at mask 1 longer)",
                     ("l1", "l2"))
    lr: float = _key(1e-4, "peak learning rate (AdamW), reached after the warmup")
    min_lr: float = _key(1e-6, "the floor the decay ends at, on the last step")
    warmup_steps: int = _key(1000, "linear warmup from 0 to lr over this many steps")
    decay: str = _key("polynomial", "after the warmup: polynomial or cosine decay to min_lr", ("polynomial", "cosine"))
    decay_power: float = _key(1.0, "polynomial decay power (1: linear)")
    weight_decay: float = _key(0.01, "AdamW weight decay (matrices and convolutions only)")
    beta1: float = _key(0.9, "AdamW beta1")
    beta2: float = _key(0.999, "AdamW beta2")
    eps: float = _key(1e-8, "AdamW epsilon")
    grad_clip: float = _key(1.0, "clip the global gradient norm to this (0: no clipping)")
    ema_decay: float = _key(0.999, "EMA of the weights (0: no EMA); saved, used for validation")
    seed: int = _key(0, "seed of the weights' initialisation and of dropout")
    device: str = _key("auto", "auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    precision: str = _key("auto", "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16", ("auto", "fp32", "bf16", "fp16"))
    max_nonfinite: int = _key(8, "stop (after saving) when this many steps in a row have a non-finite loss or gradient")
    threads: int = _key(0, "torch CPU threads (0: on the CPU, the cores per rank minus its loader workers)")
    freeze: str = _key("none", "frozen part while finetuning: none or encoders (no gradients, eval mode)",
                       ("none", "encoders"))
    unfreeze_after: int = _key(0, "train the frozen part again after this many steps (0: frozen for the whole run)")


@dataclass
class DenoiseSection:
    """train.objective = "denoise" (vr_model.train.denoise; docs/training.md)."""

    gamma: list = _key([0.95, 0.95], "[low, high]: each example's gamma in x_t = sqrt(g) x + sqrt(1 - g) eps "
                                     "(equal: fixed; SNR = g / (1 - g))")
    domain: str = _key("log", "where the noise is added: log (standardised log magnitude) or magnitude",
                       ("log", "magnitude"))
    noise_scale: float = _key(1.0, "factor on eps in x_t (the seed's fork: 0.2 in the magnitude domain)")
    loss: str = _key("l2", "distance between the predicted and the true noise: l2 (the paper) or l1", ("l1", "l2"))
    floor_db: float = _key(-100.0, "log domain: floor below the crop's peak (dB) that keeps ln finite")


@dataclass
class Stage:
    crop_frames: int = _key(512, "frames per crop")
    batch_size: int = _key(4, "examples per forward pass, all ranks together")
    accumulation: int = _key(4, "forward passes per optimizer step")
    steps: int = _key(100_000, "optimizer steps in this stage")


def _seed_curriculum() -> list[Stage]:
    # The seed's 512 -> 1024 -> 2048 frames (about 12, 24, 48 s), same global batch (16).
    return [Stage(512, 4, 4, 100_000), Stage(1024, 2, 8, 50_000), Stage(2048, 1, 16, 25_000)]


@dataclass
class CheckpointSection:
    every: int = _key(1000, "save a checkpoint every this many steps (and at the end of every stage)")
    keep: int = _key(3, "keep the last this many checkpoints (the best by validation is kept too)")


@dataclass
class ValidationSection:
    every: int = _key(1000, "validate every this many steps (0: only at the end)")
    crop_frames: int = _key(0, "frames per validation crop (0: the first stage's crop_frames)")
    crops_per_track: int = _key(4, "fixed crops per valid track, evenly spaced")
    batch_size: int = _key(8, "validation examples per forward pass")
    weights: str = _key("ema", "validate the ema weights (where kept) or the raw weights", ("ema", "raw"))
    sdr_songs: int = _key(0, "also SDR on this many full valid songs (needs vr_model.inference.evaluate; 0: off)")


@dataclass
class LogSection:
    every: int = _key(10, "a progress line and a metrics record every this many steps")
    tensorboard: bool = _key(True, "write TensorBoard event files to RUN_DIR/tensorboard")
    progress: str = _key("auto", "auto (rich on a terminal, plain lines otherwise), rich or plain", ("auto", "rich", "plain"))
    examples: bool = _key(False, "write RUN_DIR/examples.jsonl: every step's example indices, tracks, offsets, gains")


@dataclass
class TrainConfig:
    """Every setting of a run. Sections are dataclasses; `mixer` is a dict of MixerConfig options."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    mixer: dict = field(default_factory=_mixer_defaults)
    train: TrainSection = field(default_factory=TrainSection)
    curriculum: list = field(default_factory=_seed_curriculum)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    log: LogSection = field(default_factory=LogSection)
    denoise: DenoiseSection = field(default_factory=DenoiseSection)

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

        return DenoiseConfig(**{**dataclasses.asdict(self.denoise), "gamma": tuple(self.denoise.gamma)})

    def mixer_config(self, stage: Stage, per_rank_batch: int, split: str = "train") -> MixerConfig:
        values = dict(self.mixer)
        for name in _MIXER_NULLABLE:
            values[name] = values.get(name) or None
        return MixerConfig.from_dict({**values, "crop_frames": stage.crop_frames, "batch_size": per_rank_batch, "split": split})

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

    def to_dict(self) -> dict:
        return {
            "model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data), "mixer": dict(self.mixer),
            "train": dataclasses.asdict(self.train), "curriculum": [dataclasses.asdict(s) for s in self.curriculum],
            "checkpoint": dataclasses.asdict(self.checkpoint), "validation": dataclasses.asdict(self.validation),
            "log": dataclasses.asdict(self.log), "denoise": dataclasses.asdict(self.denoise),
        }


_SECTIONS = {
    "model": ModelSection, "data": DataSection, "train": TrainSection, "checkpoint": CheckpointSection,
    "validation": ValidationSection, "log": LogSection, "denoise": DenoiseSection,
}


# -- reading and validating ------------------------------------------------------------------------
def _checked(where: str, value: Any, default: Any, choices: tuple | None) -> Any:
    """`value` coerced to the type of `default` (ints become floats; tuples are lists), or an error."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise VRDataError(None, f"config key {where} must be {type(default).__name__}, not {value!r}")
    if choices and value not in choices:
        raise VRDataError(None, f"config key {where} must be one of {', '.join(map(str, choices))}, not {value!r}")
    return value


def _section(cls, record: Any, where: str):
    if not isinstance(record, dict):
        raise VRDataError(None, f"config [{where}] must be a table")
    known = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(record) - set(known))
    if unknown:
        raise VRDataError(None, f"unknown config key {where}.{unknown[0]}"
                                f" (keys of [{where}]: {', '.join(known)})")
    defaults = cls()
    values = {}
    for name, value in record.items():
        values[name] = _checked(f"{where}.{name}", value, getattr(defaults, name), known[name].metadata.get("choices"))
    return dataclasses.replace(defaults, **values)


def config_from_dict(record: dict) -> TrainConfig:
    """A validated `TrainConfig` from a (partial) dict; missing keys keep their defaults."""
    unknown = sorted(set(record) - {"mixer", "curriculum", *_SECTIONS})
    if unknown:
        raise VRDataError(None, f"unknown config section {unknown[0]!r} "
                                f"(sections: model, data, mixer, train, curriculum, checkpoint, validation, log, "
                                f"denoise)")
    config = TrainConfig()
    for name, cls in _SECTIONS.items():
        if name in record:
            setattr(config, name, _section(cls, record[name], name))
    if "mixer" in record:
        defaults = _mixer_defaults()
        mixer = dict(defaults)
        for key, value in record["mixer"].items():
            if key not in defaults:
                raise VRDataError(None, f"unknown config key mixer.{key} (keys of [mixer]: {', '.join(defaults)})")
            mixer[key] = value if key == "proportions" else _checked(f"mixer.{key}", value, defaults[key], None)
        config.mixer = mixer
    if "curriculum" in record:
        stages = record["curriculum"]
        if not isinstance(stages, list) or not stages:
            raise VRDataError(None, "config key curriculum must be a non-empty list of stages")
        config.curriculum = [_section(Stage, stage, f"curriculum.{index}") for index, stage in enumerate(stages)]
    if config.train.objective == "denoise" and config.mixer["proportions"] == _mixer_defaults()["proportions"]:
        # The supervised kinds' default makes no sense for pretraining: its crops come from `pretrain`.
        config.mixer["proportions"] = {"pair": 0.0, "augmented": 0.0, "pretrain": 1.0}
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Cross-key checks (each a one-line VRDataError)."""
    from vr_model.train.objectives import OBJECTIVES

    problems = []
    unknown = sorted(set(config.model.overrides) - {item.name for item in dataclasses.fields(FramePrimerConfig)})
    if unknown:
        problems.append(f"unknown config key model.overrides.{unknown[0]} (not a FramePrimerConfig field)")
    head = config.model.overrides.get("head")
    if head is not None and head != ("linear" if config.train.objective == "denoise" else "mask"):
        problems.append(f"model.overrides.head = {head!r} contradicts train.objective = {config.train.objective!r} "
                        f"(the head follows the objective: mask for supervised, linear for denoise)")
    if config.train.unfreeze_after < 0:
        problems.append("train.unfreeze_after must be >= 0 (0: never)")
    if config.train.objective not in OBJECTIVES:
        problems.append(f"train.objective must be one of {', '.join(OBJECTIVES)}, not {config.train.objective!r}")
    for index, stage in enumerate(config.curriculum):
        if min(stage.crop_frames, stage.batch_size, stage.accumulation, stage.steps) < 1:
            problems.append(f"curriculum.{index}: crop_frames, batch_size, accumulation and steps must be >= 1")
    if not 0.0 <= config.train.ema_decay < 1.0:
        problems.append("train.ema_decay must be in [0, 1)")
    if config.train.lr <= 0 or config.train.min_lr < 0 or config.train.min_lr > config.train.lr:
        problems.append("need 0 <= train.min_lr <= train.lr and train.lr > 0")
    if config.train.warmup_steps < 0 or config.train.max_nonfinite < 1:
        problems.append("train.warmup_steps must be >= 0 and train.max_nonfinite >= 1")
    if config.checkpoint.every < 1 or config.checkpoint.keep < 1 or config.log.every < 1:
        problems.append("checkpoint.every, checkpoint.keep and log.every must be >= 1")
    if min(config.validation.every, config.validation.crop_frames, config.validation.sdr_songs) < 0 \
            or config.validation.crops_per_track < 1 or config.validation.batch_size < 1:
        problems.append("validation: every, crop_frames, sdr_songs >= 0; crops_per_track, batch_size >= 1")
    if problems:
        raise VRDataError(None, "; ".join(problems))
    config.model_config()  # a bad override value fails here, naming it
    config.mixer_config(config.curriculum[0], 1)
    try:
        config.denoise_config()
    except VRDataError as error:
        raise VRDataError(None, f"[denoise]: {error.reason}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=3e-4"` -> (["train", "lr"], 0.0003). The value is read as a TOML value
    (numbers, booleans, "strings", [lists], {inline tables}); anything else is a bare string."""
    if "=" not in text:
        raise VRDataError(None, f"--set needs key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".")]
    if not all(path):
        raise VRDataError(None, f"--set key {key!r} is not a dotted path")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_override(record: dict, path: list[str], value: Any) -> None:
    """Set `record[path...] = value` in a config dict; list items by index (`curriculum.1.steps`)."""
    node: Any = record
    for depth, part in enumerate(path[:-1]):
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise VRDataError(None, f"--set {'.'.join(path)}: {where} is not an index of the list (0..{len(node) - 1})")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise VRDataError(None, f"unknown config key {where}")
            node = node[part]
        else:
            raise VRDataError(None, f"unknown config key {'.'.join(path)} ({where} is a value, not a table)")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise VRDataError(None, f"--set {'.'.join(path)}: not an index of the list (0..{len(node) - 1})")
        node[int(last)] = value
    elif isinstance(node, dict):
        # model.overrides and mixer.proportions take new keys; validation names unknown ones.
        if last not in node and path[:-1] not in (["model", "overrides"], ["mixer", "proportions"]):
            raise VRDataError(None, f"unknown config key {'.'.join(path)}")
        node[last] = value
    else:
        raise VRDataError(None, f"unknown config key {'.'.join(path)}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the TOML file's keys, then the `key=value` overrides; validated."""
    record = TrainConfig().to_dict()
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise VRDataError(path, f"cannot read the config: {error.strerror or error}") from None
        try:
            user = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise VRDataError(path, f"not valid TOML: {error}") from None
        try:
            record = _merge(record, user)
        except VRDataError as error:
            raise VRDataError(path, error.reason) from None
    for text in overrides:
        key, value = parse_override(text)
        apply_override(record, key, value)
    return config_from_dict(record)


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
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise VRDataError(None, f"config value {value} cannot be written to TOML")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise VRDataError(None, f"config value {value!r} cannot be written to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _help(cls, name: str) -> str:
    item = {f.name: f for f in dataclasses.fields(cls)}[name]
    return item.metadata.get("help", "")


def dump_config(config: TrainConfig) -> str:
    """TOML text of `config`, a comment above every key; `load_config` reads it back unchanged."""
    lines = ["# vrtrain run config. `vrtrain config` prints the defaults; `--set section.key=value`",
             "# overrides any key. Reference: docs/training.md.", ""]

    def section(title: str, cls, instance) -> None:
        lines.append(f"[{title}]")
        for item in dataclasses.fields(cls):
            if item.name == "overrides":
                continue
            lines.append(f"# {_help(cls, item.name)}")
            lines.append(f"{item.name} = {_toml_value(getattr(instance, item.name))}")
        lines.append("")

    section("model", ModelSection, config.model)
    lines.append("[model.overrides]")
    lines.append(f"# {_help(ModelSection, 'overrides')}")
    for key, value in config.model.overrides.items():
        lines.append(f"# replaces the {config.model.preset} preset's {key}")
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    lines.append("")
    section("data", DataSection, config.data)
    lines.append("[mixer]")
    lines.append("# how examples are made (vr_data.mixer.MixerConfig; docs/mixer.md)")
    for key, value in config.mixer.items():
        lines.append(f"# {MIXER_HELP.get(key, 'see docs/mixer.md')}")
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    lines.append("")
    section("train", TrainSection, config.train)
    lines.append("# The curriculum: stages run in order; keep batch_size x accumulation (the global batch)")
    lines.append("# the same in every stage. The learning-rate schedule spans all stages.")
    for stage in config.curriculum:
        lines.append("[[curriculum]]")
        for item in dataclasses.fields(Stage):
            lines.append(f"{item.name} = {_toml_value(getattr(stage, item.name))}  # {_help(Stage, item.name)}")
        lines.append("")
    section("checkpoint", CheckpointSection, config.checkpoint)
    section("validation", ValidationSection, config.validation)
    section("log", LogSection, config.log)
    section("denoise", DenoiseSection, config.denoise)
    return "\n".join(lines)
