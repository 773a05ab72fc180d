"""Listen and look: resynthesise sampled mixer examples as WAV files and a spectrogram sheet.

For each example, `NN_kind_mixture.wav`, `NN_kind_target.wav` and `NN_kind_vocal.wav`
(mixture minus target), by inverse STFT of the complex example (the same recipe the training
kernel turns into magnitudes), `sheet.png` with their log-magnitude spectrograms, and
`examples.jsonl`: per example, the record the training ledger keeps (`MixerBase.example_record`:
kind, track ids, frame offsets, gains, flips), with its number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vr_data.audio import write_audio
from vr_data.io import atomic_write_with
from vr_data.mixer.kernels import mix_complex


def preview_examples(dataset, count: int, epoch: int = 0) -> list[dict]:
    """The first `count` examples of `epoch` from a ZarrMixerDataset, as complex spectrograms.

    Each dict: `kind`, `index`, `valid` (frames), `recipe` (a `Recipe`), `record` (the ledger's
    record of it: tracks, frame offsets, gains), `mixture`/`target`/`vocal` complex64
    `(2, bins, frames)`.
    """
    examples: list[dict] = []
    plan = dataset.plan(epoch)
    k = 0
    while len(examples) < count and k < plan.batches_per_rank:
        buffers = dataset.new_buffers()
        recipes, indices = dataset.assemble(plan, k, buffers)
        for j, (recipe, index) in enumerate(zip(recipes, indices)):
            mixture, target = mix_complex(
                buffers.main[j], None if recipe.target_is_main else buffers.instrumental[j],
                buffers.vocal[j] if recipe.has_vocal else None, vocal_gain=recipe.vocal_gain,
                swap_main=recipe.swap_main, swap_vocal=recipe.swap_vocal, mono=recipe.mono,
            )
            valid = recipe.valid
            examples.append({
                "kind": recipe.kind, "index": index, "valid": valid, "recipe": recipe,
                "record": dataset.example_record(recipe, index),
                "mixture": mixture[:, :, :valid], "target": target[:, :, :valid],
                "vocal": (mixture - target)[:, :, :valid],
            })
            if len(examples) == count:
                break
        k += 1
    return examples


def write_preview(examples: list[dict], stft_config, directory: str | Path) -> list[Path]:
    """Write the WAVs, `sheet.png` and `examples.jsonl` for `examples` into `directory`; returns
    the files written."""
    from vr_data.dsp.stft import istft
    from vr_data.io import atomic_write_lines

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number, example in enumerate(examples):
        for part in ("mixture", "target", "vocal"):
            audio = istft(example[part], stft_config)
            path = directory / f"{number:02d}_{example['kind']}_{part}.wav"
            write_audio(path, np.clip(audio, -1.0, 1.0), stft_config.sample_rate)
            written.append(path)
    written.append(_sheet(examples, stft_config, directory / "sheet.png"))
    atomic_write_lines(directory / "examples.jsonl",
                       [{"number": number, **example["record"]} for number, example in enumerate(examples)])
    written.append(directory / "examples.jsonl")
    return written


def _sheet(examples: list[dict], stft_config, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(examples))
    figure, axes = plt.subplots(rows, 3, figsize=(12, 2.2 * rows), squeeze=False)
    seconds_per_frame = stft_config.hop_length / stft_config.sample_rate
    for row, example in enumerate(examples):
        # One level scale per row (the mixture's), so a vocal-free example shows an empty vocal.
        top = float(20 * np.log10(np.abs(example["mixture"]).mean(axis=0).max() + 1e-5))
        for column, part in enumerate(("mixture", "target", "vocal")):
            magnitude = np.abs(example[part]).mean(axis=0)
            decibels = 20 * np.log10(magnitude + 1e-5)
            frames = magnitude.shape[1]
            axis = axes[row][column]
            axis.imshow(decibels, origin="lower", aspect="auto", vmin=top - 80, vmax=top,
                        extent=(0, frames * seconds_per_frame, 0, stft_config.sample_rate / 2000), cmap="magma")
            axis.set_title(f"{row:02d} {example['kind']} {part}", fontsize=8)
            axis.set_xlabel("s", fontsize=7)
            axis.set_ylabel("kHz", fontsize=7)
            axis.tick_params(labelsize=6)
    figure.tight_layout()
    atomic_write_with(path, lambda temporary: figure.savefig(temporary, dpi=80, format="png"))
    plt.close(figure)
    return path
