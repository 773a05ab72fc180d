"""`vrtrain separate`, `vrtrain eval` and `vrtrain export`: thin wrappers over vr_model.inference.separate,
vr_model.inference.evaluate and vr_model.inference.export (docs/separation.md)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from pipelines.common import console, err_console, progress, user_errors
from pipelines.apps import vrtrain_app as app
from vr_data.audio import AUDIO_EXTENSIONS
from vr_data.errors import VRDataError
from vr_data.io import check_output_folder
from vr_data.audio.blocks import FORMATS, SUBTYPES, check_output_format
from vr_model.inference.masking import DEFAULT_OVERLAP
from vr_model.inference.separate import STEMS, SeparationOptions, Separator

_CHECKPOINT_HELP = "Checkpoint directory (or a run directory: its best checkpoint)."


def _options(crop_frames: Optional[int], overlap: float, batch_size: int, tta: bool,
             shifts: int = 1) -> SeparationOptions:
    return SeparationOptions(crop_frames=crop_frames, overlap=overlap, batch_size=batch_size, tta=tta, shifts=shifts)


def _separator(checkpoint: Optional[Path], onnx: Optional[Path], device: str, weights: Optional[str],
               options: SeparationOptions) -> Separator:
    if onnx is not None:
        from vr_model.inference.export import separator_from_onnx
        from vr_model.inference.loading import resolve_device

        return separator_from_onnx(onnx, resolve_device(device), options)
    if checkpoint is None:
        raise VRDataError(None, "give --checkpoint CKPT (or --onnx MODEL.onnx)")
    from vr_model.inference.loading import separator_from_checkpoint

    return separator_from_checkpoint(checkpoint, device, weights, options)


# Option help is one short sentence: typer's panels give it about 40 columns at 80.
_OVERLAP_HELP = "Share of a crop overlapping the next, in [0, 1)."
_BATCH_HELP = "Crops per network call (>= 1)."
_CROP_HELP = "Frames per crop, 1..max_frames (default: max_frames)."
_DEVICE_HELP = "auto (CUDA if present), cpu, cuda or cuda:N."
_WEIGHTS_HELP = "ema or raw (default: ema where kept)."
_TTA_HELP = "Average 2 shifted passes and a left/right swap."


# ----------------------------------------------------------------------------- separate


@app.command("separate")
@user_errors
def separate_command(
    songs: list[Path] = typer.Argument(..., metavar="SONG_OR_DIR...", help="Audio files, or folders to search."),
    out: Path = typer.Option(..., "--out", help="Folder for NAME_instrumental, NAME_vocals."),
    checkpoint: Optional[Path] = typer.Option(None, help=_CHECKPOINT_HELP),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="An exported network (vrtrain export)."),
    format: str = typer.Option("wav", "--format", help=f"{', '.join(FORMATS)} (mp3: if soundfile writes it)."),
    subtype: str = typer.Option("PCM_24", help=f"{', '.join(SUBTYPES)} (flac: PCM only)."),
    stem: Optional[str] = typer.Option(None, "--stem", help="Write only instrumental or vocals."),
    overlap: float = typer.Option(DEFAULT_OVERLAP, help=_OVERLAP_HELP),
    batch_size: int = typer.Option(4, help=_BATCH_HELP),
    crop_frames: Optional[int] = typer.Option(None, help=_CROP_HELP),
    shifts: int = typer.Option(1, "--shifts", help="Shifted crop grids to average (>= 1)."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    weights: Optional[str] = typer.Option(None, help=_WEIGHTS_HELP),
    tta: bool = typer.Option(False, "--tta", help=_TTA_HELP),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip songs already separated."),
) -> None:
    """Separate songs into instrumental and vocals, at each song's own rate, channels and length."""
    check_output_format(format, subtype)
    if stem is not None and stem not in STEMS:
        raise VRDataError(None, f"--stem must be instrumental or vocals, not {stem!r}")
    stems = STEMS if stem is None else (stem,)
    options = _options(crop_frames, overlap, batch_size, tta, shifts)   # refused here, before any work
    check_output_folder(out)
    found, missing = _find_songs(songs)
    if not found and not missing:
        raise VRDataError(None, "no audio files found in the given paths")
    separator = _separator(checkpoint, onnx, device, weights, options)
    failures: list[tuple[Path, str]] = [(path, "file not found") for path in missing]
    for path in missing:
        err_console.print(f"[bold red]error:[/] {path}: file not found", highlight=False, soft_wrap=True)
    done = skipped = 0
    seconds = elapsed = 0.0
    names: dict[Path, Path] = {}
    for path, relative in found:
        target_dir = out / relative.parent
        name = relative.stem
        key = target_dir / name
        if key in names:
            reason = f"same output name as {names[key]}; rename one of them"
            failures.append((path, reason))
            err_console.print(f"[bold red]error:[/] {path}: {reason}", highlight=False, soft_wrap=True)
            continue
        names[key] = path
        if skip_existing and all((target_dir / f"{name}_{part}.{format}").is_file() for part in stems):
            skipped += 1
            continue
        started = time.perf_counter()
        try:
            song = _separate_one(separator, path, target_dir, name, format, subtype, stems)
        except VRDataError as error:
            failures.append((path, error.reason))
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            continue
        done += 1
        seconds += song.seconds
        elapsed += time.perf_counter() - started
    speed = f", {seconds / elapsed:.1f} s of audio per second" if elapsed else ""
    console.print(f"separated {done} song(s) ({seconds / 60:.1f} min{speed}) into {out}", highlight=False,
                  soft_wrap=True)
    if skipped:
        console.print(f"skipped {skipped} already done (--skip-existing)", highlight=False)
    if failures:
        console.print(f"[bold red]{len(failures)} failed:[/]", highlight=False)
        for path, reason in failures:
            console.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _find_songs(paths: list[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(file, path relative to its argument's folder) for every audio file, and missing paths."""
    found, missing = [], []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            found += [(file, file.relative_to(path)) for file in files]
        elif os.path.lexists(path):   # a FIFO or a symlink loop too: opening it says what it is
            found.append((path, Path(path.name)))
        else:
            missing.append(path)
    return found, missing


def _separate_one(separator: Separator, path: Path, target_dir: Path, name: str, format: str, subtype: str,
                  stems: tuple[str, ...]):
    """One song with its progress (a bar on a terminal, plain lines otherwise: pipelines.common).

    The bar fits 80 columns: the song's name cut to 20 characters, a short bar, minutes done of
    the total, the speed (x realtime) and the time left; the rate and channels go on the line
    above it."""
    from vr_data.audio.blocks import open_audio_blocks

    header = open_audio_blocks(path)   # fail early with the decoder's reason; the blocks are not read
    rate = header.sample_rate
    layout = "mono" if header.channels == 1 else "stereo"
    console.print(f"{path.name} ({rate / 1000:g} kHz {layout}, {header.seconds / 60:.1f} min)", highlight=False,
                  soft_wrap=True)
    if header.warning is not None:
        err_console.print(f"[bold yellow]warning:[/] {path}: {header.warning}", highlight=False, soft_wrap=True)
    started = time.perf_counter()
    with progress("min", bar_width=12, elapsed=False) as bar:
        task = bar.add_task(path.stem[:20], total=header.seconds / 60, rate="")

        def on_progress(written: int) -> None:
            speed = written / rate / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=written / rate / 60, rate=f"{speed:.1f}x")

        song = separator.separate_file(path, target_dir, format=format, subtype=subtype, name=name, stems=stems,
                                       on_progress=on_progress)
    written = [file.name for file in (song.instrumental, song.vocals) if file is not None]
    console.print(f"  -> {', '.join(written)}", highlight=False, soft_wrap=True)
    return song


# ----------------------------------------------------------------------------- eval


@app.command("eval")
@user_errors
def eval_command(
    manifest: str = typer.Option(..., "--manifest", help="Pair manifest; M.jsonl=ROOT re-roots it."),
    out: Path = typer.Option(..., "--out", help="Folder for eval.json and plots/."),
    checkpoint: Optional[Path] = typer.Option(None, help=_CHECKPOINT_HELP),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="An exported network instead."),
    root: Optional[Path] = typer.Option(None, help="Where the manifest's files are now."),
    split: str = typer.Option("valid", help="valid (to choose models) or test."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N tracks (by id)."),
    overlap: float = typer.Option(DEFAULT_OVERLAP, help=_OVERLAP_HELP),
    batch_size: int = typer.Option(4, help=_BATCH_HELP),
    crop_frames: Optional[int] = typer.Option(None, help=_CROP_HELP),
    shifts: int = typer.Option(1, "--shifts", help="Shifted crop grids to average (>= 1)."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    weights: Optional[str] = typer.Option(None, help=_WEIGHTS_HELP),
    tta: bool = typer.Option(False, "--tta", help=_TTA_HELP),
    no_plots: bool = typer.Option(False, "--no-plots", help="No bar chart per track in OUT/plots."),
) -> None:
    """SDR of every pair of a split (global MDX SDR and BSSEval v4), beside floor and ceiling."""
    plots = not no_plots
    from pipelines.common import parse_manifest_spec
    from vr_data.catalog import read_manifest
    from vr_data.io import atomic_write_json
    from vr_model.inference.evaluate import eval_tracks, evaluate_tracks, plot_track, song_name

    options = _options(crop_frames, overlap, batch_size, tta, shifts)   # refused here, before any work
    check_output_folder(out)
    manifest_path, root = parse_manifest_spec(manifest, root)
    tracks = eval_tracks(read_manifest(manifest_path, root=root), split, limit)
    separator = _separator(checkpoint, onnx, device, weights, options)
    out.mkdir(parents=True, exist_ok=True)

    def on_track(track, result, error):
        if error is not None:
            err_console.print(f"[bold red]error:[/] {song_name(track.id)}: {error}", highlight=False, soft_wrap=True)
            return
        console.print(f"{song_name(track.id)}: instrumental {result.model.instrumental_sdr:.2f} dB "
                      f"(floor {result.floor.instrumental_sdr:.2f}, ceiling {result.ceiling.instrumental_sdr:.2f})",
                      highlight=False)
        if plots:
            plot_track(result, out / "plots" / f"{track.id}.png")

    report = evaluate_tracks(separator, tracks, on_track)
    document = report.to_json()
    document["checkpoint"] = str(checkpoint) if checkpoint is not None else None
    document["onnx"] = str(onnx) if onnx is not None else None
    document["manifest"], document["split"] = str(manifest_path), split
    atomic_write_json(out / "eval.json", document)
    for metric, title in (("sdr", "global SDR (MDX), dB"), ("bsseval_sdr", "BSSEval v4 SDR, dB")):
        console.print(_table(report, metric, title))
    median = report.aggregate("median")["model"]["instrumental"]["sdr"]
    floor = report.aggregate("median")["floor"]["instrumental"]["sdr"]
    ceiling = report.aggregate("median")["ceiling"]["instrumental"]["sdr"]
    console.print(f"median instrumental SDR {median:.2f} dB: {median - floor:+.2f} dB over the floor "
                  f"({floor:.2f}), {ceiling - median:.2f} dB below the ceiling ({ceiling:.2f})", highlight=False)
    # --- issue 24: the input-blind oracles beside the model (vr_model.inference.oracles)
    if report.oracles is not None and report.results:
        from vr_model.inference.oracles import ORACLE_TITLES, ORACLES

        console.print("input-blind oracles fitted on these tracks' stems, median "
                      "instrumental SDR:", highlight=False)
        for name in ORACLES:
            value = report.oracles.median_instrumental_sdr(name)
            console.print(f"  {ORACLE_TITLES[name]}: {value:.2f} dB (model {median - value:+.2f})", highlight=False)
    # --- end issue 24
    console.print(f"results in {out / 'eval.json'}" + (f", plots in {out / 'plots'}" if plots else ""),
                  highlight=False, soft_wrap=True)
    if report.failures:
        raise typer.Exit(1)


def _table(report, metric: str, title: str) -> Table:
    """Scores per song (named as the manifest's folder or file names it, not by hashed id)."""
    from vr_model.inference.evaluate import song_name

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("song", overflow="ellipsis", no_wrap=True, max_width=24)
    for stem in ("inst", "vocals"):
        for estimate in ("floor", "model", "ceiling"):
            table.add_column(f"{stem}\n{estimate}", justify="right", no_wrap=True)
    order = [(stem, estimate) for stem in ("instrumental", "vocals") for estimate in ("floor", "model", "ceiling")]
    for result in report.results:
        table.add_row(song_name(result.id), *(_cell(getattr(result, estimate).get(stem, metric)) for stem, estimate in order))
    table.add_section()
    for statistic in ("median", "mean"):
        values = report.aggregate(statistic)
        table.add_row(statistic, *(_cell(values[estimate][stem][metric]) for stem, estimate in order))
    return table


def _cell(number: float) -> str:
    return "n/a" if math.isnan(number) else f"{number:.2f}"


# ----------------------------------------------------------------------------- export


@app.command("export")
@user_errors
def export_command(
    checkpoint: Path = typer.Option(..., help=_CHECKPOINT_HELP),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write ('-': standard output)."),
    weights: Optional[str] = typer.Option(None, help="ema or raw, where the checkpoint has both."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip comparing onnxruntime with torch."),
) -> None:
    """Export the mask network to ONNX (normalised magnitude in, mask out; dynamic frames)."""
    check = not no_check
    from vr_model.inference.export import export_onnx, max_abs_difference
    from vr_model.inference.loading import load_checkpoint_model

    model, normalisation, stft_config = load_checkpoint_model(checkpoint, "cpu", weights)
    data = export_onnx(model, onnx, normalisation, stft_config)
    config = model.config
    # With `--onnx -` the model is on standard output: the report goes to standard error.
    report = err_console if str(onnx) == "-" else console
    report.print(f"wrote {onnx} ({len(data) / 1e6:.1f} MB): magnitude (batch, {config.in_channels}, "
                 f"{config.bins + 1}, frames <= {config.max_frames}) -> mask; normalisation "
                 f"{normalisation.kind}", highlight=False)
    if check:
        difference = max_abs_difference(model, data, frames=(1, min(37, config.max_frames), config.max_frames),
                                        batch=1)
        report.print(f"onnxruntime vs torch: max abs difference {difference:.2e}", highlight=False)
        if not difference <= 1e-4:
            raise VRDataError(onnx, f"the export differs from torch by {difference:.2e} (> 1e-4)")
