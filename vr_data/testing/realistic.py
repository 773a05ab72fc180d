"""A realistic check corpus from recordings that install from Debian, built on demand.

Why: on synthetic music a model separates at once; on real music it learns slowly, and an
input-blind equaliser is a hard baseline (issue 24). This corpus is the fastest honest signal
of whether a recipe learns real separation. It is never committed as audio: it is built from
installed packages into a folder the user names, and cached there.

- **Instrumentals**: the game soundtracks in `INSTRUMENTAL_PACKAGES` (Ogg Vorbis, 44.1 kHz),
  as listed by `dpkg -L`. `EXCLUDED_PACKAGES` (drascula-music, hyperrogue-music, asc-music)
  are reserved for an independent evaluation and refused.
- **Vocals**: festival's singing mode (`text2wave -mode singing`) on scores generated here
  (random melodies in a random key, monosyllabic random lyrics, tempi 70-150 BPM, both diphone
  voices, transpositions), and spoken or chanted lines of random words from espeak-ng voices
  (several accents, male and female variants, pitch and rate varied; chants step the pitch per
  word through SSML). festival's shipped example songs are never read.
- **Split by recording**: `split_recordings` holds out whole soundtrack files (a share of each
  package) for evaluation, so no evaluation instrumental comes from a recording in the training
  library. Evaluation vocals are rendered from other seeds than the training vocals.
- **Mixing**: each evaluation pair's vocal RMS sits `VOCAL_LEVELS_DB` (uniform, -10 to 0 dB)
  against its instrumental's (floor SDR 0-10 dB, median about 5 dB, like released songs);
  the training vocals sit at `TRAIN_VOCAL_LEVEL_DB` under the instrumentals' average RMS (the
  mixer draws its own gains on top). A pair that would clip is scaled down as a whole, so
  mixture = instrumental + vocal holds to the sample.

Layout under the corpus folder (the one `benchmarks/bench_quality.py` scans):
`train/instrumentals/*.flac`, `train/vocals/*.flac`,
`eval/pairs/mixtures/NAME_mix.flac` + `eval/pairs/instruments/NAME_inst.flac`, and
`corpus.json`, written last: it records the spec and the package versions, and a folder whose
`corpus.json` is missing or differs is rebuilt (a killed build is never taken for a finished
one). Only `train/`, `eval/` and `corpus.json` are ever removed from the folder.

The packages are installed by `make realistic-deps` (root and apt-get); nothing is installed
at import or build time. `missing_requirements()` says what is absent.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vr_data.audio import load_audio, write_audio
from vr_data.io import atomic_write_json, atomic_write_with

INSTRUMENTAL_PACKAGES = ("singularity-music", "planetblupi-music-ogg")
VOICE_PACKAGES = ("festival", "festvox-kallpc16k", "festvox-kdlpc16k", "espeak-ng")
PACKAGES = INSTRUMENTAL_PACKAGES + VOICE_PACKAGES
# Reserved for an independent evaluation of recipes: never read, whatever the caller asks.
EXCLUDED_PACKAGES = ("drascula-music", "hyperrogue-music", "asc-music")
EXCLUDED_PATHS = ("/usr/share/doc/festival/examples",)    # festival's example songs
AUDIO_SUFFIXES = (".ogg", ".mp3", ".wav", ".flac")

FESTIVAL_VOICES = ("kal_diphone", "ked_diphone")
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
ESPEAK_VARIANTS = ("", "+f2", "+f3", "+f4", "+m3", "+m5")
VOCAL_LEVELS_DB = (-10.0, 0.0)       # evaluation pairs: vocal RMS against the instrumental's
TRAIN_VOCAL_LEVEL_DB = -5.0          # training vocals against the instrumentals' average RMS
PEAK = 0.98

# Monosyllables festival's lexicon knows: a syllable per note keeps the score aligned.
WORDS = tuple("""
love night light fire rain sun moon star sky blue red gold dream heart soul time run fly hold
home road long way stay go know see feel say cry high low day sea wind song free
call fall far near deep true new old bright dark cold warm hope rise stand walk turn burn
""".split())
NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9)}


class CorpusUnavailable(RuntimeError):
    """The packages the corpus is built from are not installed (the message says which)."""


@dataclass(frozen=True)
class RealisticSpec:
    """How much of each kind of audio the corpus holds (seconds per clip)."""

    train_segments: int = 24          # instrumental excerpts from the training recordings
    train_sung: int = 16
    train_spoken: int = 8
    eval_pairs: int = 16
    train_seconds: float = 30.0
    eval_seconds: float = 20.0
    eval_fraction: float = 0.3        # share of each package's recordings held out for evaluation
    seed: int = 24
    sample_rate: int = 44100

    def to_dict(self) -> dict:
        return asdict(self)


FULL = RealisticSpec()
QUICK = RealisticSpec(train_segments=6, train_sung=4, train_spoken=2, eval_pairs=4, train_seconds=15.0,
                      eval_seconds=10.0)       # bench_quality.py --quick: a smoke run
TINY = RealisticSpec(train_segments=2, train_sung=2, train_spoken=1, eval_pairs=2, train_seconds=6.0,
                     eval_seconds=5.0)


# ----------------------------------------------------------------------------- requirements


def missing_requirements(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """What stops a build here: absent executables and packages (empty when it can run)."""
    missing = [tool for tool in ("dpkg-query", "text2wave", "espeak-ng") if shutil.which(tool) is None]
    if "dpkg-query" in missing:
        return missing
    missing += [package for package in packages if package_version(package) is None]
    return missing


def require_packages(packages: tuple[str, ...] = PACKAGES) -> None:
    missing = missing_requirements(packages)
    if missing:
        raise CorpusUnavailable(f"the realistic corpus needs {', '.join(missing)} "
                                f"(install them with `make realistic-deps`: root and apt-get)")


def package_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", package],
                            capture_output=True, text=True, check=False)
    status, _, version = result.stdout.partition("\t")
    return version if result.returncode == 0 and status.endswith(" installed") else None


def package_recordings(package: str) -> list[Path]:
    """The audio files an installed package ships (`dpkg -L`), sorted; refuses reserved ones."""
    if package in EXCLUDED_PACKAGES:
        raise ValueError(f"{package} is reserved for an independent evaluation and never used here")
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CorpusUnavailable(f"{package} is not installed (`make realistic-deps` installs it)")
    paths = [Path(line) for line in result.stdout.splitlines()
             if line.lower().endswith(AUDIO_SUFFIXES) and not line.startswith(EXCLUDED_PATHS)]
    return sorted(path for path in paths if path.is_file())


# ----------------------------------------------------------------------------- pure parts


def split_recordings(recordings: dict[str, list[Path]], eval_fraction: float,
                     seed: int) -> tuple[list[Path], list[Path]]:
    """(training, evaluation) recordings: from each package, a `eval_fraction` share (at least
    one where it has two or more) picked by a seeded hash of the file name; disjoint, sorted."""
    train, held_out = [], []
    for package in sorted(recordings):
        paths = sorted(recordings[package], key=lambda p: hashlib.sha256(f"{seed}:{p.name}".encode()).hexdigest())
        count = round(eval_fraction * len(paths))
        if len(paths) >= 2:
            count = min(max(count, 1), len(paths) - 1)
        held_out += paths[:count]
        train += paths[count:]
    return sorted(train), sorted(held_out)


@dataclass(frozen=True)
class Note:
    word: str
    note: str          # e.g. "Bb3"
    beats: float


@dataclass(frozen=True)
class Rest:
    beats: float


@dataclass(frozen=True)
class Score:
    """A melody for festival's singing mode: tempo and events (notes with a word, rests)."""

    bpm: int
    events: tuple = field(default_factory=tuple)

    def beats(self) -> float:
        return sum(event.beats for event in self.events)


def note_name(midi: int) -> str:
    """MIDI number -> festival's note name with flats, e.g. 58 -> "Bb3", 60 -> "C4"."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def random_score(rng: np.random.Generator, beats: float, low: int = 45, high: int = 64) -> Score:
    """A random phrase-structured melody of about `beats` beats in a random key, scale and tempo.

    Notes move mostly by step within the scale, between MIDI `low` and `high` (a range the
    diphone voices sing; transpose afterwards with `transpose`); phrases of 4-8 notes end in a
    rest. Durations are 0.5, 1, 1.5 or 2 beats.
    """
    scale = SCALES[str(rng.choice(sorted(SCALES)))]
    key = int(rng.integers(0, 12))
    pitches = [m for m in range(low, high + 1) if (m - key) % 12 in scale]
    position = int(rng.integers(len(pitches) // 3, 2 * len(pitches) // 3))
    events: list = []
    total = 0.0
    while total < beats:
        for _ in range(int(rng.integers(4, 9))):
            position = int(np.clip(position + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), 0, len(pitches) - 1))
            length = float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
            events.append(Note(str(rng.choice(WORDS)), note_name(pitches[position]), length))
            total += length
        rest = float(rng.choice([0.5, 1.0, 2.0]))
        events.append(Rest(rest))
        total += rest
    return Score(bpm=int(rng.integers(70, 151)), events=tuple(events))


def transpose(score: Score, semitones: int) -> Score:
    """The same score `semitones` higher (negative: lower)."""
    def shifted(event):
        if isinstance(event, Rest):
            return event
        name = event.note.rstrip("-0123456789")
        midi = (int(event.note[len(name):]) + 1) * 12 + NOTE_NAMES.index(name) + semitones
        return Note(event.word, note_name(midi), event.beats)

    return Score(score.bpm, tuple(shifted(event) for event in score.events))


def score_xml(score: Score) -> str:
    """The score in festival's SINGING markup (`text2wave -mode singing`)."""
    lines = ['<?xml version="1.0"?>',
             '<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" "Singing.v0_1.dtd" []>',
             f'<SINGING BPM="{score.bpm}">']
    for event in score.events:
        if isinstance(event, Rest):
            lines.append(f'<REST BEATS="{event.beats:g}"></REST>')
        else:
            lines.append(f'<DURATION BEATS="{event.beats:g}"><PITCH NOTE="{event.note}">{event.word}'
                         f'</PITCH></DURATION>')
    lines.append("</SINGING>")
    return "\n".join(lines) + "\n"


def random_line(rng: np.random.Generator, words: int) -> list[str]:
    return [str(word) for word in rng.choice(WORDS, size=words)]


def chant_ssml(words: list[str], pitches: list[int]) -> str:
    """SSML for espeak-ng: each word at its own relative pitch (percent), a chant."""
    body = " ".join(f'<prosody pitch="{pitch:+d}%">{word}</prosody>' for word, pitch in zip(words, pitches))
    return f"<speak>{body}</speak>"


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """`(channels, n)` cut or zero-padded at the end to `samples`."""
    if audio.shape[-1] >= samples:
        return audio[..., :samples]
    return np.pad(audio, ((0, 0), (0, samples - audio.shape[-1])))


def mix_pair(instrumental: np.ndarray, vocal: np.ndarray, level_db: float,
             peak: float = PEAK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mixture, instrumental, vocal), float32 `(channels, samples)` of the instrumental's length:
    the vocal (cut or padded) scaled so its RMS is `level_db` against the instrumental's, then
    both scaled by one factor if the sum would peak over `peak`; mixture = instrumental + vocal."""
    instrumental = np.asarray(instrumental, dtype=np.float64)
    vocal = fit_length(np.asarray(vocal, dtype=np.float64), instrumental.shape[-1])
    vocal_rms = rms(vocal)
    if vocal_rms > 0:
        vocal = vocal * (rms(instrumental) * 10 ** (level_db / 20) / vocal_rms)
    mixture = instrumental + vocal
    top = float(np.max(np.abs(mixture))) if mixture.size else 0.0
    if top > peak:
        scale = peak / top
        instrumental, vocal = instrumental * scale, vocal * scale
    instrumental, vocal = instrumental.astype(np.float32), vocal.astype(np.float32)
    return instrumental + vocal, instrumental, vocal


def excerpt_starts(duration: float, seconds: float, count: int, rng: np.random.Generator) -> list[float]:
    """`count` random start times of `seconds`-long excerpts in a recording of `duration`,
    skipping its first and last 5 % (intros and fade-outs); [0.0] if it is too short."""
    margin = 0.05 * duration
    latest = duration - margin - seconds
    if latest <= margin:
        return [0.0] * count
    return sorted(float(x) for x in rng.uniform(margin, latest, count))


def assign_segments(recordings: list[Path], count: int) -> list[Path]:
    """`count` recordings in turn (round robin over the sorted list)."""
    return [recordings[index % len(recordings)] for index in range(count)] if recordings else []


# ----------------------------------------------------------------------------- rendering


def sing(score: Score, voice: str, sample_rate: int) -> np.ndarray:
    """festival sings `score` with `voice`: float32 `(2, samples)` at `sample_rate`."""
    with tempfile.TemporaryDirectory(prefix="vr-sing-") as folder:
        xml, wav = Path(folder) / "score.xml", Path(folder) / "sung.wav"
        xml.write_text(score_xml(score))
        _run(["text2wave", "-mode", "singing", str(xml), "-o", str(wav), "-eval", f"(voice_{voice})"])
        return load_audio(wav, sample_rate, silence_dbfs=None)


def speak(text: str, voice: str, pitch: int, rate: int, sample_rate: int, ssml: bool = False) -> np.ndarray:
    """espeak-ng says `text` (SSML if `ssml`): float32 `(2, samples)` at `sample_rate`."""
    with tempfile.TemporaryDirectory(prefix="vr-speak-") as folder:
        wav = Path(folder) / "spoken.wav"
        _run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "-w", str(wav),
              *(["-m"] if ssml else []), text])
        return load_audio(wav, sample_rate, silence_dbfs=None)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()[:200]}")


def sung_vocal(seed: int, seconds: float, sample_rate: int) -> np.ndarray:
    """A generated song sung by festival, filled to `seconds` (more phrases until it is)."""
    rng = np.random.default_rng(seed)
    voice = str(rng.choice(FESTIVAL_VOICES))
    parts, total = [], 0
    while total < seconds * sample_rate:
        score = random_score(rng, beats=float(rng.uniform(16, 32)))
        audio = sing(transpose(score, int(rng.integers(-3, 8))), voice, sample_rate)
        parts.append(audio)
        total += audio.shape[-1]
    return fit_length(np.concatenate(parts, axis=-1), int(seconds * sample_rate))


def spoken_vocal(seed: int, seconds: float, sample_rate: int) -> np.ndarray:
    """Lines of random words from espeak-ng voices, half of them chanted, with pauses between."""
    rng = np.random.default_rng(seed)
    voice = str(rng.choice(ESPEAK_VOICES)) + str(rng.choice(ESPEAK_VARIANTS))
    parts, total = [], 0
    while total < seconds * sample_rate:
        words = random_line(rng, int(rng.integers(4, 10)))
        pitch, rate = int(rng.integers(25, 80)), int(rng.integers(110, 190))
        if rng.random() < 0.5:
            steps = [int(x) for x in rng.choice([-30, -15, 0, 15, 30, 45], size=len(words))]
            audio = speak(chant_ssml(words, steps), voice, pitch, rate, sample_rate, ssml=True)
        else:
            audio = speak(" ".join(words), voice, pitch, rate, sample_rate)
        pause = np.zeros((2, int(rng.uniform(0.2, 1.2) * sample_rate)), dtype=np.float32)
        parts += [audio, pause]
        total += audio.shape[-1] + pause.shape[-1]
    return fit_length(np.concatenate(parts, axis=-1), int(seconds * sample_rate))


# ----------------------------------------------------------------------------- the corpus


def corpus_layout(root: Path) -> dict[str, Path]:
    """The folders `scan` reads, by layout name."""
    return {"instrumentals": root / "train" / "instrumentals", "vocals": root / "train" / "vocals",
            "pairs": root / "eval" / "pairs"}


def corpus_record(spec: RealisticSpec, versions: dict[str, str | None]) -> dict:
    return {"kind": "realistic", "spec": spec.to_dict(), "packages": versions,
            "excluded": list(EXCLUDED_PACKAGES), "vocal_levels_db": list(VOCAL_LEVELS_DB),
            "train_vocal_level_db": TRAIN_VOCAL_LEVEL_DB}


def is_built(root: Path, record: dict) -> bool:
    marker = Path(root) / "corpus.json"
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    try:
        return {key: saved.get(key) for key in record} == json.loads(json.dumps(record))
    except AttributeError:          # not a JSON object
        return False


def build_realistic_corpus(root: str | Path, spec: RealisticSpec = FULL,
                           progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Build the corpus under `root` (or reuse it where `corpus.json` matches): see the module
    doc. Returns `corpus_layout(root)`. Raises `CorpusUnavailable` if packages are missing."""
    root = Path(root)
    require_packages()
    record = corpus_record(spec, {package: package_version(package) for package in PACKAGES})
    layout = corpus_layout(root)
    if is_built(root, record):
        return layout
    say = progress or (lambda message: None)
    for stale in (root / "corpus.json", root / "train", root / "eval"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    rate = spec.sample_rate
    train_recordings, eval_recordings = split_recordings(
        {package: package_recordings(package) for package in INSTRUMENTAL_PACKAGES}, spec.eval_fraction, spec.seed)
    rng = np.random.default_rng(spec.seed)

    instrumental_levels = []
    for index, recording in enumerate(assign_segments(train_recordings, spec.train_segments)):
        audio = _excerpt(recording, spec.train_seconds, rate, rng)
        instrumental_levels.append(rms(audio))
        _write(layout["instrumentals"] / f"inst_{index:02d}_{_slug(recording)}.flac", audio, rate)
    say(f"{spec.train_segments} training instrumentals from {len(train_recordings)} recordings")

    vocal_rms = float(np.mean(instrumental_levels)) * 10 ** (TRAIN_VOCAL_LEVEL_DB / 20)
    for index in range(spec.train_sung + spec.train_spoken):
        seed = spec.seed * 1000 + index
        sung = index < spec.train_sung
        audio = (sung_vocal if sung else spoken_vocal)(seed, spec.train_seconds, rate)
        audio = audio * (vocal_rms / max(rms(audio), 1e-9))
        _write(layout["vocals"] / f"vocal_{index:02d}_{'sung' if sung else 'spoken'}.flac",
               np.clip(audio, -1, 1), rate)
    say(f"{spec.train_sung} sung and {spec.train_spoken} spoken training vocals")

    levels = rng.uniform(*VOCAL_LEVELS_DB, spec.eval_pairs)
    for index, recording in enumerate(assign_segments(eval_recordings, spec.eval_pairs)):
        instrumental = _excerpt(recording, spec.eval_seconds, rate, rng)
        seed = spec.seed * 1000 + 500 + index        # other seeds than every training vocal
        # Evaluation vocals: sung, with a spoken one in every four.
        vocal = (spoken_vocal if index % 4 == 3 else sung_vocal)(seed, spec.eval_seconds, rate)
        mixture, instrumental, _ = mix_pair(instrumental, vocal, float(levels[index]))
        name = f"song_{index:02d}_{_slug(recording)}"
        _write(layout["pairs"] / "mixtures" / f"{name}_mix.flac", mixture, rate)
        _write(layout["pairs"] / "instruments" / f"{name}_inst.flac", instrumental, rate)
    say(f"{spec.eval_pairs} evaluation pairs from {len(eval_recordings)} held-out recordings")
    atomic_write_json(root / "corpus.json", {**record, "train_recordings": [str(p) for p in train_recordings],
                                             "eval_recordings": [str(p) for p in eval_recordings]})
    return layout


def _excerpt(recording: Path, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A random `seconds` excerpt of `recording` at `sample_rate`, float32 `(2, samples)`."""
    from vr_data.audio import probe

    info = probe(recording)
    start = excerpt_starts(info.samples / info.sample_rate, seconds, 1, rng)[0]
    audio = load_audio(recording, sample_rate, start_seconds=start, max_seconds=seconds, silence_dbfs=None)
    return fit_length(audio, int(seconds * sample_rate))


def _slug(path: Path) -> str:
    return "".join(c if c.isalnum() else "-" for c in path.stem.lower()).strip("-")[:24]


def _write(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    atomic_write_with(path, lambda temporary: write_audio(temporary, audio, sample_rate, format="FLAC"))
