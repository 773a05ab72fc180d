"""`vrdata preview-mix`: write sampled training examples as WAV + a spectrogram sheet."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.apps import vrdata_app as app
from pipelines.common import console, set_cache_environment, user_errors


@app.command("preview-mix")
@user_errors
def preview_mix_command(
    store: str = typer.Argument(..., help="A complete store (vrdata build-shards): a directory or s3://bucket/prefix."),
    n: int = typer.Option(8, "--n", help="How many examples."),
    out: Path = typer.Option(..., "--out", help="Folder for the WAVs and sheet.png."),
    crop_frames: int = typer.Option(256, help="Crop length in frames."),
    seed: int = typer.Option(0, help="Mixer seed."),
    split: str = typer.Option("train", help="Split to sample from: train, valid or test."),
    pair: float = typer.Option(0.5, help="Proportion of pair examples."),
    augmented: float = typer.Option(0.5, help="Proportion of augmented (instrumental + vocal) examples."),
    pretrain: float = typer.Option(0.0, help="Proportion of pretraining examples."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="s3:// stores: keep the shards read on this local disk."),
    cache_gb: float = typer.Option(None, "--cache-gb", help="Bound of --cache-dir in GB (default 50)."),
) -> None:
    """Listen to and look at what the mixer feeds the model."""
    from vr_data.catalog.manifest import SPLITS
    from vr_data.errors import ConfigError, VRDataError
    from vr_data.mixer import MixerConfig, ZarrMixerDataset
    from vr_data.mixer.preview import preview_examples, write_preview

    set_cache_environment(cache_dir, cache_gb)
    if split not in SPLITS:
        raise ConfigError(None, f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    if n < 1:
        raise ConfigError(None, f"--n must be at least 1, not {n}")
    proportions = {"pair": pair, "augmented": augmented, "pretrain": pretrain}
    if any(not value >= 0 for value in proportions.values()) or not sum(proportions.values()) > 0:
        raise ConfigError(None, "--pair, --augmented and --pretrain are proportions: none negative, at least "
                                f"one above 0 (got {pair:g}, {augmented:g}, {pretrain:g})")
    if out.exists() and not out.is_dir():
        raise VRDataError(out, "--out exists and is not a directory")

    config = MixerConfig(crop_frames=crop_frames, batch_size=min(n, 16), seed=seed, split=split,
                         proportions=proportions,
                         examples_per_epoch=max(n, 16))
    dataset = ZarrMixerDataset(store, config)
    with console.status("mixing and resynthesising"):
        examples = preview_examples(dataset, n)
        written = write_preview(examples, dataset.store.config, out)
    for number, example in enumerate(examples):
        recipe = example["recipe"]
        if recipe.has_vocal:
            vocal = f"vocal gain {recipe.vocal_gain[0]:+.2f}/{recipe.vocal_gain[1]:+.2f}"
        else:
            vocal = "instrumental only" if recipe.instrumental_only else ("no vocal" if recipe.kind == "augmented" else "")
        flags = " ".join(name for name, on in (("swapped", recipe.swap_main), ("mono", recipe.mono)) if on)
        console.print(f"{number:02d} {example['kind']:9s} {example['valid']:5d} frames  {vocal:24s} {flags}", highlight=False)
        record = example["record"]
        console.print("   " + " + ".join(f"{track}@{frame}" for track, frame in zip(record["tracks"], record["frames"])),
                      highlight=False, soft_wrap=True)
    console.print(f"wrote {len(written)} files to {out}")
