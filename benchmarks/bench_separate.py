"""Separation: peak memory against song length, and seconds of audio separated per second.

Each measurement runs `Separator.separate_file` (decode -> STFT -> crops -> iSTFT -> two output
files) in a fresh Python process, so its peak RSS (`VmHWM`) is the separation's own. Reported:
the RSS after the model is built (baseline), the peak, their difference (what separating the
song added), and that difference in units of the decoded song (float32 samples x channels at
its rate: what a decoder that holds the whole song would keep).

- Memory: synthetic 5-, 20- and 60-minute stereo 44.1 kHz wav songs through `--memory-model`
  (default `pass-through`: a parameter-free network returning a mask of ones, so the 85
  minutes of audio take minutes, not the hours `tiny` needs on a shared CPU; the network's own
  memory is one batch of crops whatever the song's length, and the `tiny` row measures it).
- Speed: `tiny` on a `--tiny-seconds` song and `frame-primer` on a `--primer-seconds` song
  (random weights: the arithmetic is that of a trained model), default options (crop =
  the model's max_frames, overlap 0.25, batch 4). Rates per wall second and per CPU second
  (all threads), since a shared machine's wall clock says little alone.

    python benchmarks/bench_separate.py                  # everything (about an hour here)
    python benchmarks/bench_separate.py --skip-speed     # memory only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100


def write_song(path: Path, minutes: float, seed: int = 0) -> Path:
    """A stereo PCM_16 wav of `minutes`, written block by block (harmonics, vibrato, noise)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * RATE)
    block = 1 << 20
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=2, subtype="PCM_16") as handle:
        for start in range(0, total, block):
            t = np.arange(start, min(start + block, total)) / RATE
            phase = 2 * np.pi * 220.0 * t + 3.0 * np.sin(2 * np.pi * 5.0 * t)
            tone = sum(np.sin(k * phase + k) / k for k in range(1, 6)) * 0.15
            audio = np.stack([tone, 0.8 * tone]) + 0.02 * rng.standard_normal((2, t.size))
            handle.write(audio.T.astype(np.float32))
    return path


def status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PassThrough:
    """A mask network with no parameters: a mask of ones (the streaming pipeline alone)."""

    channels, bins, max_frames = 2, 1025, 1024

    def __call__(self, magnitude):
        import torch

        return torch.ones_like(magnitude)


def child(song: Path, model_name: str, out: Path) -> dict:
    """Separate `song` in this (fresh) process and report memory and time as a dict."""
    import soundfile as sf
    import torch

    from vr_data.dsp import StftConfig
    from vr_data.mixer.normalisation import InputNormalisation
    from vr_model.inference.masking import TorchMaskNetwork
    from vr_model.inference.separate import SeparationOptions, Separator

    if model_name == "pass-through":
        network = PassThrough()
    else:
        from vr_model.network.presets import build_model

        torch.manual_seed(0)
        network = TorchMaskNetwork(build_model(model_name).eval())
    separator = Separator(network, InputNormalisation(), StftConfig(), SeparationOptions())
    baseline_kb = status_kb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    result = separator.separate_file(song, out, subtype="PCM_16")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    info = sf.info(song)
    return {
        "model": model_name, "seconds": result.seconds, "wall_s": wall, "cpu_s": cpu,
        "threads": torch.get_num_threads(), "baseline_mb": baseline_kb / 1024, "peak_mb": status_kb("VmHWM") / 1024,
        "decoded_mb": info.frames * info.channels * 4 / 2**20,
        "outputs_exact": all(sf.info(p).frames == info.frames for p in (result.instrumental, result.vocals)),
    }


def run_child(song: Path, model_name: str, work: Path) -> dict:
    out = work / f"out-{model_name}-{song.stem}"
    command = [sys.executable, __file__, "--child", str(song), "--model", model_name, "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"child failed ({model_name}, {song.name}):\n{completed.stderr[-2000:]}")
    for path in out.glob("*"):
        path.unlink()
    return json.loads(completed.stdout.strip().splitlines()[-1])


def line(record: dict) -> str:
    added = record["peak_mb"] - record["baseline_mb"]
    return (f"{record['model']:>12} {record['seconds'] / 60:5.1f} min: peak RSS {record['peak_mb']:7.0f} MB "
            f"(baseline {record['baseline_mb']:5.0f} MB, +{added:5.0f} MB = {added / record['decoded_mb']:.2f}x "
            f"the decoded song's {record['decoded_mb']:.0f} MB); "
            f"{record['seconds'] / record['wall_s']:.2f} s audio per wall s, "
            f"{record['seconds'] / record['cpu_s']:.2f} per CPU s ({record['threads']} threads)"
            + ("" if record["outputs_exact"] else "; OUTPUT LENGTH WRONG"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="pass-through", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 20.0, 60.0])
    parser.add_argument("--memory-model", default="pass-through", help="pass-through, tiny or frame-primer")
    parser.add_argument("--tiny-seconds", type=float, default=300.0, help="song length for the tiny speed run")
    parser.add_argument("--primer-seconds", type=float, default=60.0, help="song length for frame-primer")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("--workdir", type=Path, help="where the songs go (default: a temporary folder)")
    arguments = parser.parse_args()
    if arguments.child is not None:
        print(json.dumps(child(arguments.child, arguments.model, arguments.out)))
        return

    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start")
    records = []
    with tempfile.TemporaryDirectory(dir=arguments.workdir) as temporary:
        work = Path(temporary)
        if not arguments.skip_memory:
            print(f"memory, one fresh process per song ({arguments.memory_model}):")
            for minutes in arguments.minutes:
                song = write_song(work / f"song-{minutes:g}min.wav", minutes)
                records.append(run_child(song, arguments.memory_model, work))
                print(line(records[-1]), flush=True)
                song.unlink()
        if not arguments.skip_speed:
            print("speed, default options (crop = max_frames, overlap 0.25, batch 4):")
            for model_name, seconds in (("tiny", arguments.tiny_seconds), ("frame-primer", arguments.primer_seconds)):
                song = write_song(work / f"song-{seconds:g}s.wav", seconds / 60)
                records.append(run_child(song, model_name, work))
                print(line(records[-1]), flush=True)
                song.unlink()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
