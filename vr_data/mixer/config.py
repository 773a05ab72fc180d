"""What the mixer makes: `MixerConfig` (the data-defining options) and `Recipe` (one example's
random choices), plus the batch's crop buffers.

A recipe is drawn by `draw_recipe` from the example's own random stream, so it is a pure function
of (seed, epoch, example index); the backends then fill in which crops it reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vr_data.errors import VRDataError
from vr_data.mixer.normalisation import KINDS as NORMALISATIONS
from vr_data.mixer.sampling import KINDS

# What the `pretrain` kind's library holds: the pretrain role, and optionally other roles' audio.
PRETRAIN_SOURCES = ("pretrain", "pair_mixture", "pair_instrumental", "instrumental")
SILENCE_RULES = ("resample", "count", "keep")


@dataclass(frozen=True)
class MixerConfig:
    """How examples are made. Defaults reproduce the seed fork's recipe (docs/mixer.md).

    Probabilities are per example; `vocal_gain_db` is a uniform range in dB applied to the vocal;
    `silence_dbfs` is the RMS level (dBFS, estimated from the STFT) under which a crop is
    near-silent; `silence_rule` says what happens then: `resample` (draw another crop, up to
    `max_resamples` times), `count` (keep it, count it) or `keep`. `proportions` are weights (only
    their ratios matter). `vocal_offset_step`: vocal crops start at multiples of this many frames
    (None: at any frame).
    """

    crop_frames: int = 256
    batch_size: int = 16
    seed: int = 0
    split: str = "train"
    proportions: dict = field(default_factory=lambda: {"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
    instrumental_sources: tuple = ("instrumental", "pair")
    pretrain_sources: tuple = ("pretrain",)
    vocal_probability: float = 0.98
    swap_probability: float = 0.5
    vocal_channel_drop_probability: float = 0.025
    instrumental_only_probability: float = 0.025
    vocal_gain_db: tuple = (-6.0, 3.0)
    polarity_flip_probability: float = 0.5
    mono_probability: float = 0.02
    silence_dbfs: float = -50.0
    silence_rule: str = "resample"
    max_resamples: int = 4
    normalisation: str = "crop_max"
    stats_role: str = "pair"
    examples_per_epoch: int | None = None
    vocal_offset_step: int | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise VRDataError(None, f"normalisation must be one of {', '.join(NORMALISATIONS)}, not {self.normalisation!r}")
        if self.silence_rule not in SILENCE_RULES:
            raise VRDataError(None, f"silence_rule must be one of {', '.join(SILENCE_RULES)}, not {self.silence_rule!r}")
        if self.crop_frames < 1 or self.batch_size < 1:
            raise VRDataError(None, "crop_frames and batch_size must be positive")
        unknown = set(self.proportions) - set(KINDS)
        if unknown:
            raise VRDataError(None, f"unknown example kinds {sorted(unknown)}; kinds are {', '.join(KINDS)}")
        if self.vocal_offset_step is not None and self.vocal_offset_step < 1:
            raise VRDataError(None, f"vocal_offset_step must be positive or None, not {self.vocal_offset_step}")
        unknown = set(self.pretrain_sources) - set(PRETRAIN_SOURCES)
        if unknown or not self.pretrain_sources:
            raise VRDataError(None, f"pretrain_sources must name some of {', '.join(PRETRAIN_SOURCES)}, "
                                    f"not {list(self.pretrain_sources)}")

    def to_dict(self) -> dict:
        record = asdict(self)
        record["instrumental_sources"] = list(self.instrumental_sources)
        record["pretrain_sources"] = list(self.pretrain_sources)
        record["vocal_gain_db"] = list(self.vocal_gain_db)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "MixerConfig":
        values = dict(record)
        for key in ("instrumental_sources", "pretrain_sources", "vocal_gain_db"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


# What may change between a saved loader state and the run that resumes it: the curriculum
# changes the crop length. Every other field defines which examples the stream holds.
RESUMABLE_CHANGES = ("crop_frames",)


def data_differences(saved: MixerConfig, current: MixerConfig) -> dict[str, tuple]:
    """Fields (other than `RESUMABLE_CHANGES`) whose values differ: `{name: (saved, current)}`.
    Proportions are compared as shares ({1, 1} equals {.5, .5}; a kind of weight 0 is absent)."""
    differences = {}
    for name in MixerConfig.__dataclass_fields__:
        if name in RESUMABLE_CHANGES:
            continue
        before, now = getattr(saved, name), getattr(current, name)
        if name == "proportions":
            before, now = _shares(before), _shares(now)
        if before != now:
            differences[name] = (before, now)
    return differences


def _shares(proportions: dict) -> dict:
    weights = {kind: float(weight) for kind, weight in proportions.items() if float(weight) > 0}
    total = sum(weights.values())
    return {kind: round(weight / total, 12) for kind, weight in sorted(weights.items())} if total else {}


@dataclass
class Recipe:
    """The random choices of one example, and (filled in by the backends) what it reads.

    - `kind`: one of `KINDS`; `main`: `(library entry, first frame)` of the main crop (a pair's
      mixture, else the instrumental or pretraining crop); `valid`: frames of it inside the track.
    - `swap_main` / `swap_vocal`: left/right swaps; `mono`: fold to mono;
      `instrumental_only`: the example's mixture is its instrumental (target = mixture).
    - `has_vocal`, `vocal_gain` (linear, per output channel; 0 drops a channel, negative flips
      polarity) and `vocal_pick`: `(vocal library entry, first frame)`.
    - `target_is_main`: the target is the main crop (every kind but a pair with its mixture).
    - `silent`: near-silent crops met while drawing it (the silence rule).
    """

    kind: str
    swap_main: bool = False
    mono: bool = False
    instrumental_only: bool = False
    has_vocal: bool = False
    swap_vocal: bool = False
    vocal_gain: tuple[float, float] = (1.0, 1.0)
    main: tuple[int, int] = (0, 0)
    vocal_pick: tuple[int, int] = (0, 0)
    valid: int = 0
    target_is_main: bool = True
    silent: int = 0


def draw_recipe(config: MixerConfig, rng: np.random.Generator, kind: str) -> Recipe:
    """The random choices of one example of `kind` (everything but which crops)."""
    swap_main = bool(rng.random() < config.swap_probability)
    mono = bool(rng.random() < config.mono_probability)
    instrumental_only = bool(rng.random() < config.instrumental_only_probability)
    recipe = Recipe(kind=kind, swap_main=swap_main, mono=mono, instrumental_only=instrumental_only)
    if kind == "augmented" and not instrumental_only and rng.random() < config.vocal_probability:
        gain = 10.0 ** (rng.uniform(*config.vocal_gain_db) / 20.0)
        if rng.random() < config.polarity_flip_probability:
            gain = -gain
        gains = [gain, gain]
        if rng.random() < config.vocal_channel_drop_probability:
            gains[int(rng.integers(0, 2))] = 0.0
        recipe.has_vocal = True
        recipe.vocal_gain = (gains[0], gains[1])
        recipe.swap_vocal = bool(rng.random() < config.swap_probability)
    return recipe


@dataclass
class CropBuffers:
    """Stored crops of one batch, float16 `(batch, crop_frames, 2, 2 [re, im], bins)` each:
    `main` (a pair's mixture, else the instrumental or pretraining crop), `instrumental` (a
    pair's instrumental) and `vocal`."""

    main: np.ndarray
    instrumental: np.ndarray
    vocal: np.ndarray

    @classmethod
    def zeros(cls, batch_size: int, crop_frames: int, bins: int) -> "CropBuffers":
        shape = (batch_size, crop_frames, 2, 2, bins)
        return cls(*(np.zeros(shape, np.float16) for _ in range(3)))
