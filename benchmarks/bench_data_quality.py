"""Data-quality benchmark with known answers (issue 23): fingerprints, duplicate search, scan cost.

1. Fingerprint precision/recall per corruption: songs are synthesised (`music_like`), copied
   with one corruption each (mp3 128 kb/s, ogg, 16-bit, 48 kHz, 22.05 kHz, +-6 dB, mono, a
   0.1-3 s delay, a 0.5-3 s trim, a 10 s excerpt, and all of mp3 + 48 kHz + trim + -4 dB), and
   mixed with unrelated songs; the duplicate search runs over all of them. Recall: copies
   matched to their original at the right offset (+-2 frames). False pairs: matches between
   unrelated songs, per 1,000 unrelated pairs. Goals: recall >= 99 %, <= 1 false pair per 1,000.
   Also printed: the fewest votes of a true match and the most of an unrelated pair (the
   margin around `MIN_VOTES`), and how often unrelated songs' landmarks share a hash.
2. Duplicate search at 83-day scale: 30,000 tracks of 240 s of synthetic fingerprints (random
   landmarks at the density `lm2` gives on `music_like`, 21 a second, hashes uniform over the
   fingerprint's `HASH_BITS`, plus planted copies keeping 30 % of their original's landmarks at
   a random offset): time and peak memory of `find_matches`, and the planted copies found.
3. Scan time with and without fingerprints, the same files in the same run (alternated).
4. Pair checks: pairs (instrumental + a sparse vocal, 20 s) made wrong one way each: the
   instrumental offset by 1 to 500 ms (log-uniform), its gain changed by 0.5 to 6 dB (either
   sign), another song's instrumental; and clean pairs. The checks scan runs
   (`measure_excerpts`, `pair_flags`) flag them; precision and recall of the `offset` and `gain`
   flags (goal >= 95 % each), the swapped ones flagged by any check, clean ones by none.

Usage: python benchmarks/bench_data_quality.py [--pairs 80] [--songs 20] [--tracks 30000] [--skip-scale]
       [--only-scale] [--scan-files 8] [--scan-repeats 5]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from vr_data.audio import write_audio
from vr_data.catalog.scan import CHECK_SAMPLE_RATE, ScanOptions, measure_excerpts, scan
from vr_data.dsp.pairs import pair_flags
from vr_data.dsp.fingerprint import FRAME_SECONDS, HASH_BITS, fingerprint_audio
from vr_data.quality.search import MIN_VOTES, find_matches
from vr_data.testing.synth import music_like

RATE = 44100
SECONDS = 30.0


def _through(audio: np.ndarray, rate: int, path: Path, subtype: str | None = None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path), "w", rate, audio.shape[0], subtype=subtype) as handle:
        for start in range(0, audio.shape[1], 16384):  # blockwise: libsndfile's Vorbis writer crashes on long writes
            handle.write(np.ascontiguousarray(audio[:, start:start + 16384].T))
    data, read_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, read_rate


def corruptions(song: np.ndarray, rng: np.random.Generator, folder: Path) -> dict[str, tuple[np.ndarray, int, float]]:
    """name -> (audio, rate, where the original's t=0 is in the copy, seconds)."""
    delay, trim = rng.uniform(0.1, 3.0), rng.uniform(0.5, 3.0)
    start = rng.uniform(0, SECONDS - 10)
    combo = soxr.resample(song[:, int(trim * RATE):].T, RATE, 48000).T * np.float32(10 ** (-4 / 20))
    combo, combo_rate = _through(combo, 48000, folder / "combo.mp3")
    return {
        "mp3 128k": (*_through(song, RATE, folder / "c.mp3"), 0.0),
        "ogg vorbis": (*_through(song, RATE, folder / "c.ogg", "VORBIS"), 0.0),
        "16-bit": (*_through(song, RATE, folder / "c.wav", "PCM_16"), 0.0),
        "48 kHz": (soxr.resample(song.T, RATE, 48000).T, 48000, 0.0),
        "22.05 kHz": (soxr.resample(song.T, RATE, 22050).T, 22050, 0.0),
        "gain +6 dB": (song * np.float32(2.0), RATE, 0.0),
        "gain -6 dB": (song * np.float32(0.5), RATE, 0.0),
        "mono": (song.mean(axis=0, keepdims=True), RATE, 0.0),
        "delay 0.1-3 s": (np.concatenate([np.zeros((2, int(delay * RATE)), np.float32), song], 1), RATE,
                          int(delay * RATE) / RATE),
        "trim 0.5-3 s": (song[:, int(trim * RATE):], RATE, -int(trim * RATE) / RATE),
        "excerpt 10 s": (song[:, int(start * RATE):int(start * RATE) + 10 * RATE], RATE, -int(start * RATE) / RATE),
        "mp3+48k+trim-4dB": (combo, combo_rate, -int(trim * RATE) / RATE),
    }


def fingerprint_table(songs: int, unrelated: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prints, owners, meaning = [], [], []  # meaning: (song index, corruption or None, expected offset)
    with tempfile.TemporaryDirectory() as folder:
        for index in range(songs + unrelated):
            song = music_like(SECONDS, RATE, seed=1000 + index)
            prints.append(fingerprint_audio(song, RATE))
            meaning.append((index, None, 0.0))
            if index < songs:
                for name, (audio, rate, offset) in corruptions(song, rng, Path(folder)).items():
                    prints.append(fingerprint_audio(audio, rate))
                    meaning.append((index, name, offset))
    started = time.perf_counter()
    matches = find_matches(prints)
    search_seconds = time.perf_counter() - started
    found = {(m.a, m.b): m for m in matches}
    names = list(dict.fromkeys(name for _, name, _ in meaning if name))
    print(f"\nfingerprint matching: {songs} songs x {len(names)} corruptions + {unrelated} unrelated songs, "
          f"{SECONDS:g} s each; search {search_seconds:.2f} s")
    print(f"{'corruption':20s} {'copies':>6s} {'found':>6s} {'recall':>7s} {'offset ok':>9s} {'median votes':>12s} "
          f"{'min votes':>9s}")
    originals = {index: position for position, (index, name, _) in enumerate(meaning) if name is None}
    for name in names:
        hits = ok = 0
        votes = []
        copies = [(position, index, offset) for position, (index, n, offset) in enumerate(meaning) if n == name]
        for position, index, offset in copies:
            match = found.get((originals[index], position))
            if match is not None:
                hits += 1
                votes.append(match.votes)
                ok += abs(match.offset_seconds - offset) <= 2 * FRAME_SECONDS
        print(f"{name:20s} {len(copies):6d} {hits:6d} {100 * hits / len(copies):6.1f}% {ok:9d} "
              f"{int(np.median(votes)) if votes else 0:12d} {min(votes) if votes else 0:9d}")
    # Unrelated pairs: files of different songs (every copy counts as its song).
    unrelated_pairs = sum(1 for a, b in combinations(range(len(meaning)), 2) if meaning[a][0] != meaning[b][0])
    false = sum(1 for m in matches if meaning[m.a][0] != meaning[m.b][0])
    # The margin: the most votes an unrelated pair got at its best offset (the seconds rule off), against MIN_VOTES.
    loose = find_matches(prints, min_votes=2, min_seconds=0)
    unrelated_votes = max((m.votes for m in loose if meaning[m.a][0] != meaning[m.b][0]), default=0)
    print(f"most votes of an unrelated pair: {unrelated_votes} (a match needs {MIN_VOTES})")
    print(f"hash collisions between unrelated songs: {_collision_rate(prints, meaning):.2e} per landmark pair "
          f"(uniform {HASH_BITS}-bit hashes: {2.0 ** -HASH_BITS:.2e}; the scale table below draws uniform ones)")
    print(f"false pairs: {false} of {unrelated_pairs} unrelated pairs = {1000 * false / unrelated_pairs:.3f} per 1,000 "
          f"(goal <= 1)")


def _collision_rate(prints: list, meaning: list) -> float:
    """How often two landmarks of different songs (originals and unrelated songs, no copies) share a
    hash: how full real buckets are against the uniform hashes of the scale table."""
    songs = [(hashes, index) for (hashes, _), (index, name, _) in zip(prints, meaning) if name is None]
    pairs = lambda counts: float(np.sum(counts.astype(np.float64) * (counts - 1) / 2))  # noqa: E731
    everything = pairs(np.unique(np.concatenate([hashes for hashes, _ in songs]), return_counts=True)[1])
    within = sum(pairs(np.unique(hashes, return_counts=True)[1]) for hashes, _ in songs)
    lengths = np.array([len(hashes) for hashes, _ in songs], dtype=np.float64)
    return (everything - within) / ((lengths.sum() ** 2 - np.sum(lengths ** 2)) / 2)


def scale_table(tracks: int, seconds: float, density: float, planted: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_track = int(seconds * density)
    frames = int(seconds / FRAME_SECONDS)
    prints = []
    for _ in range(tracks):
        times = np.sort(rng.integers(0, frames, per_track)).astype(np.int32)
        prints.append((rng.integers(0, 1 << HASH_BITS, per_track, dtype=np.uint32), times))  # the real hashes' space
    answers, sources = set(), {}
    for number in range(planted):
        source = int(rng.integers(0, tracks))
        # two copies of one source also match each other: a right answer too
        answers.update((tracks + other, tracks + number) for other in sources.get(source, []))
        sources.setdefault(source, []).append(number)
        hashes, times = prints[source]
        keep = rng.random(len(hashes)) < 0.3
        shift = int(rng.integers(-100, 100))
        copy_times = times[keep] + shift
        ok = copy_times >= 0
        prints.append((hashes[keep][ok], copy_times[ok]))
        answers.add((source, tracks + number))
    landmarks = sum(len(h) for h, _ in prints)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = time.process_time()
    started = time.perf_counter()
    matches = find_matches(prints)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = {(m.a, m.b) for m in matches}
    print(f"\nduplicate search at scale: {tracks} tracks x {seconds:g} s ({tracks * seconds / 86400:.1f} days), "
          f"{landmarks / 1e6:.1f} M landmarks ({density:g}/s) + {planted} planted copies")
    print(f"search time {elapsed:.1f} s wall, {cpu:.1f} s CPU; peak RSS {peak / 2**20:.2f} GiB (before the search {before / 2**20:.2f} GiB); "
          f"planted matches found {len(found & answers)}/{len(answers)}; other matches {len(found - answers)}")


def scan_table(files: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "library"
        formats = ["wav", "flac", "mp3", "ogg"]
        for index in range(files):
            extension = formats[index % len(formats)]
            song = music_like(SECONDS, RATE, seed=index)
            if extension == "ogg":
                _through(song, RATE, root / f"song{index}.ogg", "VORBIS")
            else:
                write_audio(root / f"song{index}.{extension}", song, RATE)
        timings = {False: [], True: []}
        scan(root, ScanOptions(layout="pretrain", valid_fraction=0, fingerprint=True))  # warm imports and caches
        for _ in range(repeats):
            for fingerprint in (False, True):
                started = time.perf_counter()
                scan(root, ScanOptions(layout="pretrain", valid_fraction=0, fingerprint=fingerprint))
                timings[fingerprint].append(time.perf_counter() - started)
    without, with_ = min(timings[False]), min(timings[True])
    print(f"\nscan of {files} files x {SECONDS:g} s ({', '.join(formats)}), in one process, best of {repeats}:")
    print(f"without fingerprints {without:.3f} s, with {with_:.3f} s: x{with_ / without:.3f} "
          f"(+{100 * (with_ / without - 1):.1f} %)")


def pair_table(pairs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rate, seconds = CHECK_SAMPLE_RATE, 20.0
    outcomes = []  # (fault, flags)
    for index in range(pairs):
        instrumental = music_like(seconds, rate, seed=5000 + index).mean(axis=0) * 0.5
        vocal = music_like(seconds, rate, seed=7000 + index, style="sparse").mean(axis=0) * 0.5
        mixture = instrumental + vocal
        fault = ("clean", "offset", "gain", "swapped")[index % 4]
        if fault == "offset":
            shift = int(round(np.exp(rng.uniform(np.log(0.00101), np.log(0.5))) * rate))
            shift = shift if rng.random() < 0.5 else -shift
            silence = np.zeros(abs(shift))
            paired = (np.concatenate([silence, instrumental[:-shift]]) if shift > 0
                      else np.concatenate([instrumental[-shift:], silence]))
        elif fault == "gain":
            paired = instrumental * 10 ** (rng.choice([-1, 1]) * rng.uniform(0.5, 6.0) / 20)
        elif fault == "swapped":
            paired = music_like(seconds, rate, seed=9000 + index).mean(axis=0) * 0.5
        else:
            paired = instrumental
        checks = measure_excerpts(mixture.astype(np.float32), paired.astype(np.float32), rate)
        outcomes.append((fault, pair_flags(checks)))
    print(f"\npair checks: {pairs} pairs of {seconds:g} s, a quarter each clean, offset 1-500 ms, gain 0.5-6 dB, "
          f"swapped instrumental")
    print(f"{'flag':8s} {'true pos':>8s} {'false pos':>9s} {'false neg':>9s} {'precision':>9s} {'recall':>7s}")
    for flag in ("offset", "gain"):
        relevant = [(fault, flags) for fault, flags in outcomes if fault != "swapped"]
        true_pos = sum(fault == flag and flag in flags for fault, flags in relevant)
        false_pos = sum(fault != flag and flag in flags for fault, flags in relevant)
        false_neg = sum(fault == flag and flag not in flags for fault, flags in relevant)
        precision = true_pos / max(true_pos + false_pos, 1)
        recall = true_pos / max(true_pos + false_neg, 1)
        print(f"{flag:8s} {true_pos:8d} {false_pos:9d} {false_neg:9d} {100 * precision:8.1f}% {100 * recall:6.1f}%")
    swapped = [flags for fault, flags in outcomes if fault == "swapped"]
    clean = [flags for fault, flags in outcomes if fault == "clean"]
    print(f"swapped instrumentals flagged: {sum(bool(f) for f in swapped)}/{len(swapped)}; "
          f"clean pairs flagged: {sum(bool(f) for f in clean)}/{len(clean)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=20)
    parser.add_argument("--unrelated", type=int, default=40)
    parser.add_argument("--tracks", type=int, default=30000)
    parser.add_argument("--track-seconds", type=float, default=240.0)
    parser.add_argument("--density", type=float, default=21.0,
                        help="landmarks a second (music_like gives 17 to 24 with fingerprint lm2, 21 on average)")
    parser.add_argument("--scan-files", type=int, default=8)
    parser.add_argument("--scan-repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=80)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--only-scale", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.only_scale:
        pair_table(args.pairs, args.seed)
        fingerprint_table(args.songs, args.unrelated, args.seed)
        scan_table(args.scan_files, args.scan_repeats)
    if not args.skip_scale:
        scale_table(args.tracks, args.track_seconds, args.density, planted=100, seed=args.seed)


if __name__ == "__main__":
    main()
