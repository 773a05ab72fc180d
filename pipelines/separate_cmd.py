"""`vrtrain separate`, `vrtrain eval` and `vrtrain export`: thin wrappers over vr_model.inference.separate,
vr_model.inference.evaluate and vr_model.inference.export (docs/separation.md)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from pipelines.common import console, err_console, progress, user_errors
from pipelines.vrtrain import app
from vr_data.audio import AUDIO_EXTENSIONS
from vr_data.errors import VRDataError
from vr_model.inference.separate import DEFAULT_OVERLAP, SUBTYPES, SeparationOptions, Separator, check_output_format

_CHECKPOINT_HELP = "Checkpoint directory (or a run directory: its best checkpoint)."


def _options(crop_frames: Optional[int], overlap: float, batch_size: int, tta: bool) -> SeparationOptions:
    return SeparationOptions(crop_frames=crop_frames, overlap=overlap, batch_size=batch_size, tta=tta)


def _separator(checkpoint: Optional[Path], onnx: Optional[Path], device: str, weights: Optional[str],
               options: SeparationOptions) -> Separator:
    if onnx is not None:
        from vr_model.inference.export import separator_from_onnx
        from vr_model.inference.separate import resolve_device

        return separator_from_onnx(onnx, resolve_device(device), options)
    if checkpoint is None:
        raise VRDataError(None, "give --checkpoint CKPT (or --onnx MODEL.onnx)")
    from vr_model.inference.separate import separator_from_checkpoint

    return separator_from_checkpoint(checkpoint, device, weights, options)


# ----------------------------------------------------------------------------- separate


@app.command("separate")
@user_errors
def separate_command(
    songs: list[Path] = typer.Argument(..., metavar="SONG_OR_DIR...", help="Audio files, or folders to search."),
    out: Path = typer.Option(..., "--out", help="Folder for <name>_instrumental and <name>_vocals."),
    checkpoint: Optional[Path] = typer.Option(None, help=_CHECKPOINT_HELP),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Run an exported network (vrtrain export) "
                                        "through onnxruntime instead of a checkpoint."),
    format: str = typer.Option("wav", "--format", help="Output format: wav or flac."),
    subtype: str = typer.Option("PCM_24", help=f"Output samples: {', '.join(SUBTYPES)} (flac: PCM only)."),
    overlap: float = typer.Option(DEFAULT_OVERLAP, help="Fraction of a crop shared with the next, in [0, 1)."),
    batch_size: int = typer.Option(4, help="Crops per network call."),
    crop_frames: Optional[int] = typer.Option(None, help="Frames per crop (default: the model's max_frames)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    weights: Optional[str] = typer.Option(None, help="ema or raw, where the checkpoint has both "
                                          "(default: the checkpoint's choice)."),
    tta: bool = typer.Option(False, "--tta", help="Average with a shifted pass and a left/right-swapped pass."),
    skip_existing: bool = typer.Option(False, help="Skip songs whose two outputs already exist."),
) -> None:
    """Separate songs into instrumental and vocals, at each song's own rate, channels and length."""
    check_output_format(format, subtype)
    found, missing = _find_songs(songs)
    if not found and not missing:
        raise VRDataError(None, "no audio files found in the given paths")
    separator = _separator(checkpoint, onnx, device, weights, _options(crop_frames, overlap, batch_size, tta))
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
        if skip_existing and all((target_dir / f"{name}_{stem}.{format}").is_file() for stem in ("instrumental", "vocals")):
            skipped += 1
            continue
        started = time.perf_counter()
        try:
            song = _separate_one(separator, path, target_dir, name, format, subtype)
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
        elif path.exists():
            found.append((path, Path(path.name)))
        else:
            missing.append(path)
    return found, missing


def _separate_one(separator: Separator, path: Path, target_dir: Path, name: str, format: str, subtype: str):
    """One song with its progress (a bar on a terminal, plain lines otherwise: pipelines.common)."""
    from vr_model.inference.separate import open_audio_blocks

    header = open_audio_blocks(path)   # fail early with the decoder's reason; the blocks are not read
    rate = header.sample_rate
    layout = "mono" if header.channels == 1 else "stereo"
    started = time.perf_counter()
    with progress("min") as bar:
        task = bar.add_task(f"{path.name[:40]} ({rate / 1000:g} kHz {layout})", total=header.seconds / 60, rate="")

        def on_progress(written: int) -> None:
            speed = written / rate / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=written / rate / 60, rate=f"{speed:.2f}x realtime")

        song = separator.separate_file(path, target_dir, format=format, subtype=subtype, name=name,
                                       on_progress=on_progress)
    console.print(f"  -> {song.instrumental.name}, {song.vocals.name}", highlight=False, soft_wrap=True)
    return song


# ----------------------------------------------------------------------------- eval


@app.command("eval")
@user_errors
def eval_command(
    manifest: str = typer.Option(..., "--manifest", help="Pair manifest (pairs or MUSDB layout); M.jsonl=ROOT re-roots it."),
    out: Path = typer.Option(..., "--out", help="Folder for eval.json and plots/."),
    checkpoint: Optional[Path] = typer.Option(None, help=_CHECKPOINT_HELP),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Evaluate an exported network instead."),
    root: Optional[Path] = typer.Option(None, help="Where the manifest's files are, if they moved."),
    split: str = typer.Option("valid", help="Split to evaluate (valid selects models; test is for reporting)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N tracks (by id) only."),
    overlap: float = typer.Option(DEFAULT_OVERLAP, help="Fraction of a crop shared with the next, in [0, 1)."),
    batch_size: int = typer.Option(4, help="Crops per network call."),
    crop_frames: Optional[int] = typer.Option(None, help="Frames per crop (default: the model's max_frames)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    weights: Optional[str] = typer.Option(None, help="ema or raw, where the checkpoint has both."),
    tta: bool = typer.Option(False, "--tta", help="Average with a shifted and a left/right-swapped pass."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="A bar chart per track in OUT/plots."),
) -> None:
    """SDR of every pair of a split (global MDX SDR and BSSEval v4), beside floor and ceiling."""
    from pipelines.common import parse_manifest_spec
    from vr_data.catalog import read_manifest
    from vr_data.io import atomic_write_json
    from vr_model.inference.evaluate import eval_tracks, evaluate_tracks, plot_track

    manifest_path, root = parse_manifest_spec(manifest, root)
    tracks = eval_tracks(read_manifest(manifest_path, root=root), split, limit)
    separator = _separator(checkpoint, onnx, device, weights, _options(crop_frames, overlap, batch_size, tta))
    out.mkdir(parents=True, exist_ok=True)

    def on_track(track, result, error):
        if error is not None:
            err_console.print(f"[bold red]error:[/] {track.id}: {error}", highlight=False, soft_wrap=True)
            return
        console.print(f"{track.id}: instrumental {result.model.instrumental_sdr:.2f} dB "
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
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("track", overflow="fold", min_width=20, max_width=30)
    for stem in ("inst", "vocals"):
        for estimate in ("floor", "model", "ceiling"):
            table.add_column(f"{stem}\n{estimate}", justify="right", no_wrap=True)
    order = [(stem, estimate) for stem in ("instrumental", "vocals") for estimate in ("floor", "model", "ceiling")]
    for result in report.results:
        table.add_row(result.id, *(_cell(getattr(result, estimate).get(stem, metric)) for stem, estimate in order))
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
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write."),
    weights: Optional[str] = typer.Option(None, help="ema or raw, where the checkpoint has both."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with torch after export."),
) -> None:
    """Export the mask network to ONNX (normalised magnitude in, mask out; dynamic frames)."""
    from vr_model.inference.export import export_onnx, max_abs_difference
    from vr_model.inference.separate import load_checkpoint_model

    model, normalisation, stft_config = load_checkpoint_model(checkpoint, "cpu", weights)
    export_onnx(model, onnx, normalisation, stft_config)
    config = model.config
    console.print(f"wrote {onnx} ({onnx.stat().st_size / 1e6:.1f} MB): magnitude (batch, {config.in_channels}, "
                  f"{config.bins + 1}, frames <= {config.max_frames}) -> mask; normalisation "
                  f"{normalisation.kind}", highlight=False)
    if check:
        difference = max_abs_difference(model, onnx, frames=(1, min(37, config.max_frames), config.max_frames),
                                        batch=1)
        console.print(f"onnxruntime vs torch: max abs difference {difference:.2e}", highlight=False)
        if not difference <= 1e-4:
            raise VRDataError(onnx, f"the export differs from torch by {difference:.2e} (> 1e-4)")
