"""Does it learn? A budgeted quality check of the whole recipe.

    .venv/bin/python benchmarks/bench_quality.py [--budget-minutes 25] [--quick] [--work DIR]
        [--threads 1] [--set train.lr=3e-3 ...] [--keep]

1. Synthesises a corpus with `vr_data.testing.demo` (chords, bass and drums; sung vowels with
   vibrato): instrumentals and vocals for training, which the mixer combines at random, and
   evaluation pairs (instrumental + vocal) whose instrumentals and vocals come from other seeds
   than every training track's.
2. Scans the training libraries and builds a store (the project's defaults: 44.1 kHz, n_fft
   2048, hop 1024).
3. Trains `tiny` with `vr_model.train.train` for a wall-clock budget: a few timed steps first
   measure this machine's step time under its current load, and the run gets the number of
   steps that fits the budget (its learning-rate schedule needs the count up front).
4. Separates every evaluation pair with the checkpoint (its EMA weights, the normalisation it
   was trained with) and scores it as `vrtrain eval` does: the MDX global SDR of the
   instrumental, beside the floor (the mixture as the estimate) and the ceiling (the ideal
   ratio mask on the same STFT). It also prints the mean mask, weighted by the mixture's
   energy, on bins where the vocal dominates and on bins where the instrumental does: a model
   that has learned to pass everything shows ~1 on both.

It passes when the median instrumental SDR is at least 1 dB over the median floor; otherwise it
prints a FAIL line and exits 1. `--quick` is a smoke run (a small corpus, a minute of training):
it checks the pipeline, not the quality, and never fails on the gain.

The corpus and the store are cached in `--work` (default: a temporary directory, removed at the
end unless `--keep`); a rerun with the same `--work` reuses them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_BUDGET_MINUTES = 25.0


@dataclass(frozen=True)
class CorpusSpec:
    """How much audio the benchmark synthesises (seconds per track)."""

    instrumentals: int = 16
    vocals: int = 16
    eval_pairs: int = 6
    seconds: float = 30.0
    eval_seconds: float = 20.0
    sample_rate: int = 44100

    def to_dict(self) -> dict:
        return dict(self.__dict__)


FULL = CorpusSpec()
QUICK = CorpusSpec(instrumentals=3, vocals=3, eval_pairs=2, seconds=12.0, eval_seconds=8.0)

# Seeds of the synthetic generators: disjoint ranges, so no evaluation pair shares an
# instrumental or a vocal with the training libraries (vocal_track adds 10_000 internally).
TRAIN_INSTRUMENTAL_SEED = 1000
TRAIN_VOCAL_SEED = 2000
EVAL_SEED = 9000
VOCAL_LEVEL_DB = -6.0              # training vocals' RMS against the instrumentals' average
EVAL_VOCAL_LEVELS_DB = (-9.0, -3.0)  # each evaluation pair's vocal RMS against its instrumental

# The recipe the benchmark trains with (docs/performance.md, "quality", says how it was found).
# `--set` overrides any of these; the curriculum's steps are set from the budget.
RECIPE = {
    "crop_frames": 64,     # 1.5 s: at a fixed compute budget, 4x the steps of 256-frame crops
    "batch_size": 4,
    "overrides": [
        "model.preset=tiny",
        "train.loss=l2",   # L1 kept the mask at ~1 everywhere (pass everything)
        "train.lr=3e-3",
        "train.min_lr=1e-5",
        "train.warmup_steps=20",
        "train.ema_decay=0.99",
    ],
}


# ----------------------------------------------------------------------------- corpus and store


def synthesise(root: Path, spec: CorpusSpec) -> dict[str, Path]:
    """Write the corpus under `root` (skipped where a finished marker says it is there).

    Layout: `train/instrumentals/inst_NN.flac`, `train/vocals/vocal_NN.flac`,
    `eval/pairs/{mixtures,instruments}/song_NN_{mix,inst}.flac` (mixture = instrumental + vocal,
    clipped to [-1, 1]).
    """
    import numpy as np

    from vr_data.audio import write_audio
    from vr_data.testing.demo import instrumental_track, vocal_track

    roots = {"instrumentals": root / "train" / "instrumentals", "vocals": root / "train" / "vocals",
             "pairs": root / "eval" / "pairs"}
    marker = root / "corpus.json"
    record = {**spec.to_dict(), "vocal_level_db": VOCAL_LEVEL_DB, "eval_vocal_levels_db": list(EVAL_VOCAL_LEVELS_DB)}
    if marker.is_file() and json.loads(marker.read_text()) == record:
        return roots
    if root.exists():
        shutil.rmtree(root)
    rate = spec.sample_rate
    instrumental_rms = []
    for index in range(spec.instrumentals):
        audio = instrumental_track(spec.seconds, rate, TRAIN_INSTRUMENTAL_SEED + index)
        instrumental_rms.append(_rms(audio))
        write_audio(roots["instrumentals"] / f"inst_{index:02d}.flac", audio, rate)
    # Vocal stems at a typical level: their RMS VOCAL_LEVEL_DB under the instrumentals' average
    # (the generator's own vocals are louder than its instrumentals, which no real song is).
    vocal_rms = float(np.mean(instrumental_rms)) * 10 ** (VOCAL_LEVEL_DB / 20)
    for index in range(spec.vocals):
        audio = vocal_track(spec.seconds, rate, TRAIN_VOCAL_SEED + index)
        write_audio(roots["vocals"] / f"vocal_{index:02d}.flac", audio * (vocal_rms / _rms(audio)), rate)
    levels = np.random.default_rng(EVAL_SEED).uniform(*EVAL_VOCAL_LEVELS_DB, spec.eval_pairs)
    for index in range(spec.eval_pairs):
        instrumental = instrumental_track(spec.eval_seconds, rate, EVAL_SEED + index)
        vocal = vocal_track(spec.eval_seconds, rate, EVAL_SEED + index)
        vocal = vocal * (_rms(instrumental) * 10 ** (levels[index] / 20) / _rms(vocal))
        mixture = np.clip(instrumental + vocal, -1, 1)
        write_audio(roots["pairs"] / "mixtures" / f"song_{index:02d}_mix.flac", mixture, rate)
        write_audio(roots["pairs"] / "instruments" / f"song_{index:02d}_inst.flac", instrumental, rate)
    marker.write_text(json.dumps(record))
    return roots


def _rms(audio) -> float:
    import numpy as np

    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def build(root: Path, roots: dict[str, Path]) -> tuple[Path, Path]:
    """(store, evaluation manifest): the training libraries scanned (all in the train split) and
    built into `root/store`; the evaluation pairs scanned into `root/manifests/eval_pairs.jsonl`."""
    from vr_data.catalog.manifest import read_manifest, write_manifest
    from vr_data.catalog.scan import ScanOptions, scan
    from vr_data.store.build import build_store

    manifests = {}
    for layout, directory in roots.items():
        result = scan(directory, ScanOptions(layout=layout, valid_fraction=0.0))
        if result.rejects:
            raise SystemExit(f"scan of {directory} rejected {len(result.rejects)} file(s): {result.rejects[0]}")
        manifests[layout] = write_manifest(root / "manifests" / f"{layout}.jsonl", result.manifest)
    store = root / "store"
    built = store / "built-from.json"
    corpus = (root / "corpus" / "corpus.json").read_text()
    if built.is_file() and built.read_text() == corpus:
        return store, manifests["pairs"]
    if store.exists():
        shutil.rmtree(store)
    build_store([read_manifest(manifests["instrumentals"]), read_manifest(manifests["vocals"])], store)
    built.write_text(corpus)
    return store, manifests["pairs"]


# ----------------------------------------------------------------------------- training


def run_config(recipe: dict, steps: int, threads: int, extra: list[str]):
    """The training config: the recipe, augmented mixes only (the store has no pairs), one
    stage of `steps` steps, no validation (the store has no valid split), quiet logging."""
    from vr_model.train import load_config

    stage = f"curriculum=[{{crop_frames={recipe['crop_frames']}, batch_size={recipe['batch_size']}, " \
            f"accumulation=1, steps={steps}}}]"
    overrides = [
        "mixer.proportions={augmented=1.0}", 'mixer.instrumental_sources=["instrumental"]',
        f"train.threads={threads}", "data.workers=1", "log.every=10", "log.tensorboard=false",
        "log.progress=plain", "validation.every=0", f"checkpoint.every={steps}", "checkpoint.keep=1",
        *recipe["overrides"], stage, *extra,
    ]
    return load_config(None, overrides)


def measure_step_seconds(store: Path, work: Path, recipe: dict, threads: int, extra: list[str],
                         steps: int = 30) -> float:
    """Seconds per optimizer step of the real loop (loader, forward, loss, backward, AdamW, EMA)
    on this machine now: a throwaway run of `steps` steps, timed over its intervals after the
    first ten steps (which pay for oneDNN's primitive creation and the loader's start)."""
    from vr_model.train import train
    from vr_model.train.runlog import read_metrics

    run_dir = Path(tempfile.mkdtemp(prefix="calibration-", dir=work))
    try:
        train(store, run_dir, run_config(recipe, steps, threads, [*extra, "log.progress=plain"]))
        intervals = [r for r in read_metrics(run_dir) if r.get("kind") == "train" and r["step"] > 10]
        return sum(r["seconds_per_step"] for r in intervals) / len(intervals)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    report: object                 # vr_model.inference.evaluate.EvalReport
    mask_vocal: float              # energy-weighted mean mask where |V| > |I|
    mask_instrumental: float       # ... where |I| >= |V|
    constant_gain_sdr: float       # median SDR of the best constant gain c x mixture per track
    spectral_mask_sdr: float       # median SDR of the best fixed per-bin mask over all pairs
    seconds: float


def evaluate(checkpoint: Path, eval_manifest: Path, crop_frames: int, weights: str = "ema") -> Evaluation:
    """Separate and score every evaluation pair: decode, STFT, masks crop by crop (the
    checkpoint's normalisation), inverse STFT, then model / floor / ceiling scores per track."""
    import numpy as np

    from vr_data.catalog.manifest import read_manifest
    from vr_data.dsp import istft, stft
    from vr_model.inference.evaluate import EvalReport, eval_tracks, global_sdr, load_references, score_track
    from vr_model.inference.loading import separator_from_checkpoint
    from vr_model.inference.separate import SeparationOptions

    started = time.perf_counter()
    separator = separator_from_checkpoint(checkpoint, device="cpu", weights=weights,
                                          options=SeparationOptions(crop_frames=crop_frames, overlap=0.5))
    config = separator.stft
    report = EvalReport()
    weighted = {"vocal": [0.0, 0.0], "instrumental": [0.0, 0.0]}
    constant = []
    spectra = []
    for track in eval_tracks(read_manifest(eval_manifest)):
        mixture, instrumental, vocals = load_references(track, config.sample_rate)
        mixture_spec = stft(mixture, config)
        estimate_spec = separator.instrumental_spectrogram(mixture_spec)
        estimate = istft(estimate_spec, config, length=mixture.shape[-1])
        report.results.append(score_track(track.id, mixture, instrumental, vocals, estimate, config))
        # An input-independent estimate: the least-squares gain on the mixture (an oracle).
        gain = float(np.vdot(mixture.astype(np.float64), instrumental) / np.vdot(mixture.astype(np.float64), mixture))
        constant.append(global_sdr(instrumental, gain * mixture))
        spectra.append((mixture_spec, instrumental))
        magnitude = np.abs(mixture_spec)
        mask = np.divide(np.abs(estimate_spec), magnitude, out=np.ones_like(magnitude), where=magnitude > 0)
        vocal_dominated = np.abs(stft(vocals, config)) > np.abs(stft(instrumental, config))
        energy = magnitude ** 2
        for name, where in (("vocal", vocal_dominated), ("instrumental", ~vocal_dominated)):
            weighted[name][0] += float(np.sum(mask * energy * where))
            weighted[name][1] += float(np.sum(energy * where))
    # Another oracle: one real mask per frequency bin, least squares over every pair (what a
    # model that learned only where vocals sit in frequency, and nothing about the input, does).
    numerator = sum(np.sum((stft(reference, config) * np.conj(spec)).real, axis=(0, 2)) for spec, reference in spectra)
    denominator = sum(np.sum(np.abs(spec) ** 2, axis=(0, 2)) for spec, _ in spectra)
    spectral = np.clip(numerator / np.maximum(denominator, 1e-30), 0, 1)[None, :, None]
    spectral_sdr = [global_sdr(reference, istft(spectral * spec, config, length=reference.shape[-1]))
                    for spec, reference in spectra]
    return Evaluation(report, weighted["vocal"][0] / max(weighted["vocal"][1], 1e-30),
                      weighted["instrumental"][0] / max(weighted["instrumental"][1], 1e-30),
                      float(np.median(constant)), float(np.median(spectral_sdr)), time.perf_counter() - started)


# ----------------------------------------------------------------------------- the run


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help=f"training wall-clock budget (default {DEFAULT_BUDGET_MINUTES:g}; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small corpus, 1 minute, no pass/fail")
    parser.add_argument("--work", type=Path, default=None, help="cache the corpus, store and run here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--crop", type=int, default=None, help="training crop frames (recipe's otherwise)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (recipe's otherwise)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of the budget's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra trainer config override (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch

    from pipelines.allocator import allocator_in_use
    from vr_model.train import train

    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else FULL
    budget_minutes = args.budget_minutes if args.budget_minutes is not None else (1.0 if args.quick else DEFAULT_BUDGET_MINUTES)
    recipe = dict(RECIPE)
    recipe["crop_frames"] = args.crop or recipe["crop_frames"]
    recipe["batch_size"] = args.batch or recipe["batch_size"]

    temporary = None
    if args.work is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_quality_")
        work = Path(temporary.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} torch thread(s), allocator {allocator_in_use()}; "
          f"load average {load_average()}")
    try:
        started = time.perf_counter()
        roots = synthesise(work / "corpus", spec)
        store = work / "store"
        store, eval_manifest = build(work, roots)
        print(f"corpus: {spec.instrumentals} instrumentals + {spec.vocals} vocals x {spec.seconds:g} s for training, "
              f"{spec.eval_pairs} evaluation pairs x {spec.eval_seconds:g} s (other seeds); "
              f"synthesis and store {time.perf_counter() - started:.0f} s")

        if args.steps:
            steps, step_seconds = args.steps, None
        else:
            step_seconds = measure_step_seconds(store, work, recipe, args.threads, args.overrides,
                                                steps=12 if args.quick else 30)
            steps = max(1, int(budget_minutes * 60 / step_seconds))
        config = run_config(recipe, steps, args.threads, args.overrides)
        stage = config.curriculum[0]
        print(f"training: tiny, crop {stage.crop_frames} frames, batch {stage.batch_size}, lr {config.train.lr:g}, "
              f"warmup {config.train.warmup_steps}, loss {config.train.loss}, normalisation "
              f"{config.mixer.normalisation}" + (f"; extra {' '.join(args.overrides)}" if args.overrides else ""))
        if step_seconds is not None:
            print(f"budget {budget_minutes:g} min; a calibration run measured {step_seconds:.2f} s/step now "
                  f"-> {steps} steps")
        (work / "runs").mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=work / "runs"))
        load_before = load_average()
        summary = train(store, run_dir, config)
        print(f"trained: {summary.steps} steps, {summary.examples} examples in {summary.seconds / 60:.1f} min "
              f"({summary.seconds / max(summary.steps, 1):.2f} s/step; data wait {100 * summary.data_wait_share:.1f}%); "
              f"loss {summary.first_loss:.3g} -> {summary.last_loss:.3g}; load average {load_before} -> {load_average()}")

        if step_seconds is not None and summary.seconds > 1.2 * budget_minutes * 60:
            print(f"note: training took {summary.seconds / 60:.1f} min, over the {budget_minutes:g} min budget "
                  f"(the machine got slower than during the calibration)")
        evaluation = evaluate(run_dir, eval_manifest, stage.crop_frames)
        medians = evaluation.report.aggregate("median")
        model, floor, ceiling = (medians[name]["instrumental"]["sdr"] for name in ("model", "floor", "ceiling"))
        gain = model - floor
        print(f"evaluation ({len(evaluation.report.results)} pairs, {evaluation.seconds:.0f} s): "
              f"per-track instrumental SDR " + ", ".join(f"{r.model.instrumental_sdr:.2f}" for r in evaluation.report.results))
        print(f"mean mask (energy-weighted): {evaluation.mask_vocal:.3f} on vocal-dominated bins, "
              f"{evaluation.mask_instrumental:.3f} on instrumental-dominated bins")
        print(f"median instrumental SDR: model {model:.2f} dB, floor {floor:.2f} dB, ceiling {ceiling:.2f} dB; "
              f"gain over the floor {gain:+.2f} dB ({100 * gain / max(ceiling - floor, 1e-9):.0f}% of the way to the ceiling)")
        print(f"oracles that ignore the input: the best constant gain {evaluation.constant_gain_sdr:.2f} dB "
              f"({evaluation.constant_gain_sdr - floor:+.2f}), the best fixed mask per frequency bin "
              f"{evaluation.spectral_mask_sdr:.2f} dB ({evaluation.spectral_mask_sdr - floor:+.2f})")
        figures = {
            "budget_minutes": budget_minutes, "steps": summary.steps, "examples": summary.examples,
            "train_seconds": summary.seconds, "step_seconds_measured": step_seconds, "threads": args.threads,
            "crop_frames": stage.crop_frames, "batch_size": stage.batch_size, "overrides": args.overrides,
            "first_loss": summary.first_loss, "last_loss": summary.last_loss,
            "sdr": model, "floor": floor, "ceiling": ceiling, "gain": gain,
            "constant_gain_sdr": evaluation.constant_gain_sdr, "spectral_mask_sdr": evaluation.spectral_mask_sdr,
            "mask_vocal": evaluation.mask_vocal, "mask_instrumental": evaluation.mask_instrumental,
            "per_track": [r.model.instrumental_sdr for r in evaluation.report.results],
            "load_average_end": load_average(), "corpus": spec.to_dict(),
        }
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        if args.quick:
            print(f"quick run: pipeline OK (gain {gain:+.2f} dB is not judged in a smoke run)")
            return 0
        trained = (f"{summary.steps} steps, {summary.examples} examples, {summary.seconds / 60:.1f} min of training "
                   f"({budget_minutes:g} min budget)")
        if not math.isfinite(gain) or gain < 1.0:
            print(f"FAIL: gain over the floor {gain:+.2f} dB < 1 dB after {trained}")
            return 1
        print(f"PASS: gain over the floor {gain:+.2f} dB >= 1 dB after {trained}")
        return 0
    finally:
        if temporary is not None and not args.keep:
            temporary.cleanup()
        elif temporary is not None:
            print(f"kept {work}")


if __name__ == "__main__":
    from pipelines.allocator import ensure_fast_allocator

    ensure_fast_allocator()  # tcmalloc (or glibc tunables) as vrtrain uses: see pipelines/allocator.py
    raise SystemExit(main())
