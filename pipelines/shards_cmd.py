"""`vrdata build-shards` and `vrdata verify`: thin wrappers over vr_data.store.build and vr_data.store.verify."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipelines.common import (
    EXIT_DAMAGE, console, dask_executor, default_workers, humans_on_stderr, parse_manifest_spec, progress,
    user_errors, write_json,
)
from pipelines.apps import vrdata_app as app
from vr_data.store.remote import Location, location
from vr_data.errors import ConfigError, VRDataError
from vr_data.store.build import (
    DEFAULT_CODEC, BuildOptions, BuildResult, DryRun, build_store, existing_configs, plan_store,
)
from vr_data.store.codec import CODECS
from vr_data.catalog.manifest import read_manifest, without_rejects_files
from vr_data.io import check_writable
from vr_data.dsp.stft import StftConfig
from vr_data.store import open_store
from vr_data.store.plan import Geometry
from vr_data.store.verify import verify_store


@app.command("build-shards")
@user_errors
def build_shards_command(
    manifests: list[str] = typer.Argument(..., metavar="MANIFEST...",
                                          help="Manifests (M.jsonl, or M.jsonl=ROOT when the files moved)."),
    out: str = typer.Option(..., "--out", help="Store directory or s3://bucket/prefix to create, resume or append to."),
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
    silence_dbfs: float = typer.Option(-60.0, help="Refuse tracks whose peak is at or below this level (-inf: keep them)."),
    downmix: bool = typer.Option(False, help="Fold files with more than 2 channels to stereo instead of refusing."),
    verify_hashes: bool = typer.Option(True, help="Check each file's sha256 against its manifest before decoding."),
    workers: int = typer.Option(default_workers(), min=0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler to use instead."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="Exclusion list to honour (vrdata check "
                                           "--write-exclusions): its items are left out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be built and its estimated size; write nothing."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write a JSON summary to this file ('-': stdout)."),
) -> None:
    """Build a Zarr + WebDataset spectrogram store from MANIFESTs (parallel, resumable)."""
    out = location(out)
    loaded = load_manifests(manifests, root)
    if exclude is not None:
        with humans_on_stderr(json_out == "-"):
            loaded = _excluded(loaded, exclude, out)
    if json_out not in (None, "-"):
        check_writable(json_out)
    stft, codec_config, geometry = _configs(out, dict(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length),
                                            dict(name=codec, target_snr_db=target_snr_db, compressor=compressor, level=compression_level),
                                            dict(segment_frames=segment_frames, chunk_frames=chunk_frames,
                                                 shard_frames=shard_frames, wds=wds, wds_compression=wds_compression,
                                                 wds_shard_bytes=None if wds_shard_mb is None else int(wds_shard_mb * 2**20)))
    if dry_run:
        with humans_on_stderr(json_out == "-"):
            plan = plan_store(loaded, out, stft=stft, codec=codec_config, geometry=geometry, append=append)
            print_dry_run(plan)
        if json_out is not None:
            write_json(json_out, plan.to_json())
        return
    if not min_seconds >= 0:
        raise ConfigError(None, f"--min-seconds must be >= 0, not {min_seconds}")
    options = BuildOptions(min_seconds=min_seconds, silence_dbfs=silence_dbfs, downmix=downmix,
                           verify_hashes=verify_hashes)
    with humans_on_stderr(json_out == "-"):
        result = _build(loaded, out, stft, codec_config, geometry, options, workers, scheduler, append)
        print_build_summary(result)
        if not result.already_complete and result.count("built") + result.count("skipped") == 0:
            raise VRDataError(out, f"no track was built: all {result.count('rejected')} were rejected (see "
                                   f"{out / 'rejects.jsonl'}); check the inputs and build into a new --out")
    if json_out is not None:
        write_json(json_out, result.to_json())


def _excluded(loaded: list, exclude: Path, out: Path) -> list:
    """The manifests less the items of the exclusion list (vr_data.catalog.exclusions), said once.

    A manifest that lost items is written as `OUT.manifests/NAME` and the store built from that
    file: the store records (and `vrdata verify` re-reads) what was really built from. The same
    command writes the same bytes again, so a rerun resumes."""
    from vr_data.catalog.exclusions import apply_exclusions, read_exclusions
    from vr_data.catalog.manifest import write_manifest

    before = [len(manifest.items) for manifest in loaded]
    loaded, applied = apply_exclusions(loaded, read_exclusions(exclude))
    for index, manifest in enumerate(loaded):
        if len(manifest.items) != before[index]:
            path = out.parent / f"{out.name}.manifests" / manifest.source_path.name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_manifest(path, manifest)
            manifest.source_path = path
    counts = Counter(e.code for e in applied)
    console.print(f"excluded {len(applied)} items ({', '.join(f'{c}: {n}' for c, n in sorted(counts.items())) or '-'}) "
                  f"listed in {exclude}", highlight=False)
    return loaded


def load_manifests(specs: list[str], root: Path | None) -> list:
    """Read MANIFEST arguments (`M.jsonl` or `M.jsonl=ROOT`), leaving out the `M.rejects.jsonl`
    files `manifests/*.jsonl` also matches (when their manifest is given too)."""
    parsed = [parse_manifest_spec(spec) for spec in specs]
    kept = set(without_rejects_files(path for path, _ in parsed))
    parsed = [(path, spec_root) for path, spec_root in parsed if path in kept]
    if root is not None and len(parsed) != 1:
        raise ConfigError(None, "--root applies to a single MANIFEST; use M.jsonl=ROOT for several")
    return [read_manifest(path, root=spec_root or root) for path, spec_root in parsed]


def _build(loaded, out: Location, stft, codec_config, geometry, options: BuildOptions, workers: int,
           scheduler: str | None, append: bool) -> BuildResult:
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

        return build_store(loaded, out, stft=stft, codec=codec_config, geometry=geometry, options=options,
                           executor=executor, append=append, on_start=on_start, on_track=on_track)


def print_dry_run(plan: DryRun) -> None:
    """What would be built: tracks and audio-hours per role, and the estimated sizes."""
    table = Table(title=f"dry run: {plan.store} ({'new store' if plan.new_store else 'existing store'})")
    table.add_column("role")
    table.add_column("tracks", justify="right")
    table.add_column("audio-hours", justify="right")
    for role, values in plan.by_role().items():
        table.add_row(role, str(values["tracks"]), f"{values['hours']:.3f}")
    table.add_section()
    table.add_row("to build", str(len(plan.to_build)), f"{plan.hours():.3f}")
    if plan.done:
        table.add_row("done earlier", str(plan.done), "")
    console.print(table)
    if plan.sample_tracks:
        console.print(f"estimated size: Zarr {plan.zarr_bytes / 1e9:.3f} GB, WebDataset {plan.wds_bytes / 1e9:.3f} GB "
                      f"(compression measured on {plan.sample_seconds:.0f} s of {plan.sample_tracks} tracks)",
                      highlight=False, soft_wrap=True)
    elif plan.to_build:
        console.print(f"estimated size: WebDataset {plan.wds_bytes / 1e9:.3f} GB; Zarr unknown (no sample track "
                      "could be decoded)", highlight=False, soft_wrap=True)
    console.print("nothing written (--dry-run)", highlight=False)


def _configs(out: Location, stft_given: dict, codec_given: dict, geometry_given: dict):
    """Configs to ask for: None where nothing was given, else the given values over the store's
    own (or the defaults), so an option equal to the existing store's value is not a conflict."""
    existing = existing_configs(out) or (StftConfig(), DEFAULT_CODEC, Geometry())
    chosen = []
    for base, given in zip(existing, (stft_given, codec_given, geometry_given)):
        given = {name: value for name, value in given.items() if value is not None}
        chosen.append(replace(base, **given) if given else None)
    return tuple(chosen)


def print_build_summary(result: BuildResult) -> None:
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
        reasons.add_column("reason", no_wrap=True)
        reasons.add_column("count", justify="right", no_wrap=True)
        reasons.add_column("example", overflow="fold")
        examples = {}
        for reject in rejects:
            examples.setdefault(reject.code, f"{reject.id} ({Path(reject.manifest).name}): {reject.reason}")
        for code, count in sorted(Counter(r.code for r in rejects).items()):
            reasons.add_row(code, str(count), examples[code])
        console.print(reasons)


@app.command("verify")
@user_errors
def verify_command(
    store: str = typer.Argument(..., help="Store directory or s3://bucket/prefix to check."),
    workers: int = typer.Option(0, min=0, help="Local dask worker processes (0: in this process)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the report as JSON to this file ('-': stdout)."),
) -> None:
    """Re-read a store: tar checksums, Zarr vs WebDataset, frame counts vs manifests; exit 1 on damage."""
    store = location(store)
    opened = open_store(store)  # refuses what is not a complete store, before any cluster starts
    if json_out not in (None, "-"):
        check_writable(json_out)
    with humans_on_stderr(json_out == "-"):
        with dask_executor(workers, scheduler) as executor, progress() as bar:
            shards = bar.add_task("tar checksums", total=len(opened.wds_shards()), rate="")
            tracks = bar.add_task("zarr vs wds", total=len(opened.tracks), rate="")
            report = verify_store(store, executor, on_shard=lambda _: bar.update(shards, advance=1),
                                  on_track=lambda _: bar.update(tracks, advance=1))
        for note in report.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        for damage in report.damages:
            console.print(f"[red]damaged {damage.kind}[/] {damage.name}: {damage.reason}", highlight=False,
                          soft_wrap=True)
        summary = f"{report.tracks} tracks ({report.frames} frames), {report.shards} tars"
        console.print(f"{len(report.damages)} problems in {summary}" if not report.ok else f"intact: {summary}",
                      highlight=False)
    if json_out is not None:
        write_json(json_out, {"store": str(store), **report.to_json()})
    if not report.ok:
        raise typer.Exit(EXIT_DAMAGE)
