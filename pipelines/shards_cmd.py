"""`vrdata build-shards` and `vrdata verify`: thin wrappers over vr_data.store.build and vr_data.store.verify."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipelines.common import console, dask_executor, default_workers, progress, user_errors
from pipelines.vrdata import app
from vr_data.store.build import DEFAULT_CODEC, BuildOptions, BuildResult, build_store, existing_configs
from vr_data.store.codec import CODECS
from vr_data.catalog.manifest import read_manifest
from vr_data.dsp.stft import StftConfig
from vr_data.store import open_store
from vr_data.store.plan import Geometry
from vr_data.store.verify import verify_store


@app.command("build-shards")
@user_errors
def build_shards_command(
    manifests: list[str] = typer.Argument(..., metavar="MANIFEST...",
                                          help="Manifests (M.jsonl, or M.jsonl=ROOT when the files moved)."),
    out: Path = typer.Option(..., "--out", help="Store directory to create, resume or append to."),
    root: Optional[Path] = typer.Option(None, help="Where the files are, for a single MANIFEST (else M.jsonl=ROOT)."),
    append: bool = typer.Option(False, help="Add the manifests' new items to an existing store."),
    codec: Optional[str] = typer.Option(None, help=f"Storage codec: {', '.join(CODECS)} (default f16-q)."),
    target_snr_db: Optional[float] = typer.Option(None, help="f16-q: minimum spectral SNR per frame and channel, dB."),
    compressor: Optional[str] = typer.Option(None, help="Lossless stage (docs/codec.md): blosc-lz4 (default), blosc-lz4hc, blosc-zstd, zstd."),
    compression_level: Optional[int] = typer.Option(None, help="Level of the lossless stage (default 9)."),
    sample_rate: Optional[int] = typer.Option(None, help="STFT sample rate, Hz (default 44100)."),
    n_fft: Optional[int] = typer.Option(None, help="STFT size, samples (default 2048)."),
    hop_length: Optional[int] = typer.Option(None, help="STFT hop, samples (default 1024)."),
    segment_frames: Optional[int] = typer.Option(None, help="Frames per WebDataset sample (default 256)."),
    chunk_frames: Optional[int] = typer.Option(None, help="Frames per Zarr inner chunk (default 256)."),
    shard_frames: Optional[int] = typer.Option(None, help="Frames per Zarr shard (default 4096)."),
    wds_shard_mb: Optional[float] = typer.Option(None, help="Target size of one WebDataset tar, MB (default 256)."),
    wds: Optional[bool] = typer.Option(None, "--wds/--no-wds", help="Write the WebDataset tars too (default); "
                                       "--no-wds: Zarr only, about a quarter of the disk."),
    wds_compression: Optional[str] = typer.Option(None, help="WebDataset members: none (plain .npy, default) or "
                                                  "blosc-lz4 (.npy.blosc, about a third of the size)."),
    min_seconds: float = typer.Option(1.0, help="Refuse tracks shorter than this."),
    silence_dbfs: float = typer.Option(-60.0, help="Refuse tracks whose peak is at or below this level."),
    downmix: bool = typer.Option(False, help="Fold files with more than 2 channels to stereo instead of refusing."),
    verify_hashes: bool = typer.Option(True, help="Check each file's sha256 against its manifest before decoding."),
    workers: int = typer.Option(default_workers(), help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler to use instead."),
) -> None:
    """Build a Zarr + WebDataset spectrogram store from MANIFESTs (parallel, resumable)."""
    if root is not None and len(manifests) != 1:
        raise typer.BadParameter("--root applies to a single MANIFEST; use M.jsonl=ROOT for several")
    loaded = [_read(spec, root) for spec in manifests]
    stft, codec_config, geometry = _configs(out, dict(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length),
                                            dict(name=codec, target_snr_db=target_snr_db, compressor=compressor, level=compression_level),
                                            dict(segment_frames=segment_frames, chunk_frames=chunk_frames,
                                                 shard_frames=shard_frames, wds=wds, wds_compression=wds_compression,
                                                 wds_shard_bytes=None if wds_shard_mb is None else int(wds_shard_mb * 2**20)))
    options = BuildOptions(min_seconds=min_seconds, silence_dbfs=silence_dbfs, downmix=downmix,
                           verify_hashes=verify_hashes)
    with dask_executor(workers, scheduler) as executor, progress("audio-h") as bar:
        task = bar.add_task(f"build {out.name}", total=0.0, rate="")
        clock = {"start": time.perf_counter(), "seconds": 0.0}

        def on_start(seconds_to_build, skipped):
            bar.update(task, total=seconds_to_build / 3600.0)
            if skipped:
                console.print(f"resuming: {len(skipped)} tracks already done")
            clock["start"] = time.perf_counter()

        def on_track(outcome):
            clock["seconds"] += outcome.duration
            speed = clock["seconds"] / max(time.perf_counter() - clock["start"], 1e-9)
            bar.update(task, advance=outcome.duration / 3600.0, rate=f"{speed:.0f}x realtime")

        result = build_store(loaded, out, stft=stft, codec=codec_config, geometry=geometry, options=options,
                             executor=executor, append=append, on_start=on_start, on_track=on_track)
    _print_summary(result)


def _read(spec: str, root: Path | None):
    path, _, spec_root = spec.partition("=")
    return read_manifest(Path(path), root=Path(spec_root) if spec_root else root)


def _configs(out: Path, stft_given: dict, codec_given: dict, geometry_given: dict):
    """Configs to ask for: None where nothing was given, else the given values over the store's
    own (or the defaults), so an option equal to the existing store's value is not a conflict."""
    existing = existing_configs(out) or (StftConfig(), DEFAULT_CODEC, Geometry())
    chosen = []
    for base, given in zip(existing, (stft_given, codec_given, geometry_given)):
        given = {name: value for name, value in given.items() if value is not None}
        chosen.append(replace(base, **given) if given else None)
    return tuple(chosen)


def _print_summary(result: BuildResult) -> None:
    if result.already_complete:
        console.print(f"{result.store} is complete and has every item of these manifests; nothing to do")
    built_hours = result.seconds("built") / 3600.0
    stored_hours = (result.seconds("built") + result.seconds("skipped")) / 3600.0
    speed = result.seconds("built") / result.elapsed if result.elapsed else 0.0
    table = Table(title=f"store {result.store}")
    table.add_column("")
    table.add_column("tracks", justify="right")
    table.add_column("audio-hours", justify="right")
    for status, label in (("built", "built now"), ("skipped", "done earlier"), ("rejected", "rejected")):
        table.add_row(label, str(result.count(status)), f"{result.seconds(status) / 3600.0:.3f}")
    table.add_section()
    table.add_row("zarr", f"{result.zarr_bytes / 1e9:.3f} GB",
                  f"{result.zarr_bytes / 1e9 / stored_hours:.3f} GB/h" if stored_hours else "-")
    table.add_row("webdataset", f"{result.wds_bytes / 1e9:.3f} GB",
                  f"{result.wds_bytes / 1e9 / stored_hours:.3f} GB/h" if stored_hours else "-")
    table.add_row("time", f"{result.elapsed:.1f} s", f"{speed:.0f}x realtime" if built_hours else "-")
    console.print(table)
    rejects = result.rejects
    if rejects:
        reasons = Table(title="rejects by reason (rejects.jsonl)")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        reasons.add_column("example")
        examples = {}
        for reject in rejects:
            examples.setdefault(reject.code, f"{reject.id} ({Path(reject.manifest).name}): {reject.reason}")
        for code, count in sorted(Counter(r.code for r in rejects).items()):
            reasons.add_row(code, str(count), examples[code])
        console.print(reasons)


@app.command("verify")
@user_errors
def verify_command(
    store: Path = typer.Argument(..., help="Store directory to check."),
    workers: int = typer.Option(0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler."),
) -> None:
    """Re-read a store: tar checksums, Zarr vs WebDataset, frame counts vs manifests; exit 1 on damage."""
    opened = open_store(store)  # refuses what is not a complete store, before any cluster starts
    with dask_executor(workers, scheduler) as executor, progress() as bar:
        shards = bar.add_task("tar checksums", total=len(opened.wds_shards()), rate="")
        tracks = bar.add_task("zarr vs wds", total=len(opened.tracks), rate="")
        report = verify_store(store, executor, on_shard=lambda _: bar.update(shards, advance=1),
                              on_track=lambda _: bar.update(tracks, advance=1))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for damage in report.damages:
        console.print(f"[red]damaged {damage.kind}[/] {damage.name}: {damage.reason}", highlight=False)
    summary = f"{report.tracks} tracks ({report.frames} frames), {report.shards} tars"
    if not report.ok:
        console.print(f"{len(report.damages)} problems in {summary}")
        raise typer.Exit(1)
    console.print(f"intact: {summary}")
