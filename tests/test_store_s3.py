"""Stores on object storage, against a real S3 server (moto's, started by `conftest.s3_server`):
the CLI builds into `s3://bucket/prefix` a store identical to a local build; a SIGKILLed build
resumes to it; the lock keeps a second builder out and lets exactly one of two racers in; verify
finds a damaged object; the mixers, stats and the trainer (with resume) read the bucket; reads
are byte ranges of inner chunks; errors are one line naming the URL and the cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from typer.testing import CliRunner

from test_build_support import GEOMETRY, STFT, assert_same_contents, chunk_spans, store_contents
from vr_data.errors import VRDataError
from vr_data.store import open_store, remote
from vr_data.store.lock import Lease

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def build_args(corpus, out: str) -> list[str]:
    manifests = [str(corpus[layout]) for layout in ("pairs", "vocals", "instrumentals", "pretrain")]
    return ["build-shards", *manifests, "--out", out, "--workers", "0", "--n-fft", str(STFT.n_fft),
            "--hop-length", str(STFT.hop_length), "--chunk-frames", str(GEOMETRY.chunk_frames),
            "--shard-frames", str(GEOMETRY.shard_frames), "--segment-frames", str(GEOMETRY.segment_frames),
            "--wds-shard-mb", str(GEOMETRY.wds_shard_bytes / 2**20)]


def vrdata(*args: str):
    from pipelines.vrdata import app

    return runner.invoke(app, list(args))


def download(url: str, directory: Path) -> Path:
    """Every object under `url` into `directory` (to compare with a local store byte for byte)."""
    prefix = remote.location(url)
    for relative in remote.list_sizes(prefix):
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(remote.read_bytes(prefix / relative))
    return directory


def keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def copy_prefix(bucket: str, source: str, target: str) -> None:
    client = boto3.client("s3")
    for key in keys(bucket, source + "/"):
        client.copy_object(Bucket=bucket, Key=target + key[len(source):], CopySource={"Bucket": bucket, "Key": key})


@pytest.fixture(scope="session")
def s3_store(s3_server, corpus) -> str:
    """The corpus built by `vrdata build-shards --out s3://...` once per session (read only)."""
    boto3.client("s3").create_bucket(Bucket="vr-session-store")
    url = "s3://vr-session-store/stores/corpus"
    result = vrdata(*build_args(corpus, url))
    assert result.exit_code == 0, result.output
    return url


def test_cli_build_into_a_bucket_gives_the_local_store_byte_for_byte(s3_store, built_store, tmp_path):
    local = download(s3_store, tmp_path / "copy")
    assert_same_contents(store_contents(built_store), store_contents(local))
    meta = json.loads((local / "store.json").read_text())
    assert meta["complete"] is True
    assert not (local / ".build" / "lock").exists()  # released


def test_open_store_reads_the_same_frames_and_samples_from_the_bucket(s3_store, built_store):
    from vr_data.store import iter_wds_samples

    remote_store, local_store = open_store(s3_store), open_store(built_store)
    assert str(remote_store.path) == s3_store and remote_store.identity() == local_store.identity()
    track = remote_store.tracks[0]
    source = next(iter(track.arrays))
    assert np.array_equal(remote_store.read_frames(track, source, 3, 70), local_store.read_frames(track, source, 3, 70))
    remote_samples = list(iter_wds_samples(remote_store, "vocal"))
    local_samples = list(iter_wds_samples(local_store, "vocal"))
    assert [s["__key__"] for s in remote_samples] == [s["__key__"] for s in local_samples]
    assert all(np.array_equal(a["vocal"], b["vocal"]) for a, b in zip(remote_samples, local_samples))


def _kill_after(command: list[str], bucket: str, done_prefix: str, records: int) -> None:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "VR_PROGRESS": "0"})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if len(keys(bucket, done_prefix)) >= records:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]


@pytest.mark.slow
def test_sigkilled_build_in_a_bucket_is_locked_for_a_lease_then_resumes_identically_on_dask_workers(
        s3_bucket, corpus, built_store, tmp_path, monkeypatch):
    monkeypatch.setenv("VR_STORE_LOCK_LEASE", "6")
    url = f"s3://{s3_bucket}/store"
    command = [sys.executable, "-c", "from pipelines.vrdata import main; main()", *build_args(corpus, url)]
    _kill_after(command, s3_bucket, "store/.build/done/", 2)
    killed = time.monotonic()
    assert json.loads(remote.read_bytes(remote.location(url) / "store.json"))["complete"] is False
    assert "store/.build/lock" in keys(s3_bucket, "store/.build/")  # a dead builder's lock stays...
    refused = vrdata(*build_args(corpus, url))
    assert time.monotonic() - killed < 4, "too slow to see the lock within its lease"
    assert refused.exit_code == 2 and "in use by PID" in refused.output  # ...for one lease
    time.sleep(max(0.0, killed + 6.5 - time.monotonic()))
    # The resume runs on two dask worker processes: they write straight to the bucket.
    arguments = build_args(corpus, url)
    arguments[arguments.index("--workers") + 1] = "2"
    finished = vrdata(*arguments)
    assert finished.exit_code == 0, finished.output
    assert "resuming" in finished.output
    assert_same_contents(store_contents(built_store), store_contents(download(url, tmp_path / "copy")))


def test_of_many_racing_lock_takers_exactly_one_wins(s3_bucket):
    lock = remote.location(f"s3://{s3_bucket}/store/.build/lock")
    winners, refusals = [], []

    def take(number: int) -> None:
        lease = Lease(lock, "test", lock.parent, 60.0)
        try:
            lease.acquire()
            winners.append(lease)
        except VRDataError as error:
            refusals.append(str(error))

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(refusals) == 7
    assert all("in use by" in text for text in refusals)
    winners[0].release()
    assert keys(s3_bucket, "store/.build/") == []


def test_a_stale_lock_is_taken_over_by_exactly_one_of_two_newcomers(s3_bucket, monkeypatch):
    lock = remote.location(f"s3://{s3_bucket}/store/.build/lock")
    dead = Lease(lock, "killed builder", lock.parent, 1.0)
    dead.acquire()
    dead._stop.set()  # its process "dies": no more renewals, the lock object stays
    dead._thread.join()
    time.sleep(2.2)
    outcomes = []

    def take() -> None:
        lease = Lease(lock, "newcomer", lock.parent, 1.0)
        try:
            lease.acquire()
            outcomes.append(lease)
        except VRDataError:
            outcomes.append(None)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [lease for lease in outcomes if lease is not None]
    assert len(won) == 1
    with pytest.raises(VRDataError, match="lost the build lock"):
        dead.confirm()  # the dead builder, were it only paused, could not commit
    won[0].release()


def test_a_build_into_a_locked_bucket_store_is_refused_in_one_line(s3_bucket, corpus):
    lock = remote.location(f"s3://{s3_bucket}/store/.build/lock")
    holder = Lease(lock, "vrdata build-shards", lock.parent, 60.0)
    holder.acquire()
    try:
        result = vrdata(*build_args(corpus, f"s3://{s3_bucket}/store"))
    finally:
        holder.release()
    assert result.exit_code == 2
    assert f"s3://{s3_bucket}/store: in use by PID {os.getpid()}" in result.output


@pytest.mark.slow
def test_verify_finds_a_damaged_zarr_object_and_a_damaged_tar_in_a_bucket(s3_store, tmp_path):
    bucket, prefix = "vr-session-store", "stores/damaged"
    copy_prefix(bucket, "stores/corpus", prefix)
    url = f"s3://{bucket}/{prefix}"
    assert vrdata("verify", url).exit_code == 0
    store = open_store(url)
    track = store.tracks_by_role("pair")[0]
    shard = remote.location(url) / "zarr" / track.arrays["mixture"] / "c" / str(track.zarr_start // GEOMETRY.shard_frames) / "0/0/0"
    data = bytearray(remote.read_bytes(shard))
    local = tmp_path / "shard"
    local.write_bytes(bytes(data))
    offset, size = chunk_spans(local)[0]
    data[offset + size // 2] ^= 0x01
    remote.write_bytes(shard, bytes(data))
    tar = remote.location(url) / "wds" / store.tracks_by_role("vocal")[0].wds_shards[0]
    damaged = bytearray(remote.read_bytes(tar))
    damaged[3000] ^= 0x01
    remote.write_bytes(tar, bytes(damaged))
    result = vrdata("verify", url, "--json", "-")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    kinds = {damage["kind"] for damage in report["damages"]}
    assert {"zarr_shard", "wds_shard"} <= kinds, report
    with pytest.raises(VRDataError, match="damaged Zarr chunk"):
        store.read_frames(track, "mixture", 0, track.frames)


def test_zarr_mixer_on_a_bucket_gives_the_local_batches(s3_store, built_store):
    from vr_data.mixer import MixerConfig, ZarrMixerDataset

    config = MixerConfig(crop_frames=GEOMETRY.chunk_frames, batch_size=4, seed=3, examples_per_epoch=8,
                         proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
    for remote_batch, local_batch, _ in zip(ZarrMixerDataset(s3_store, config), ZarrMixerDataset(built_store, config),
                                            range(2)):
        assert torch_equal(remote_batch["mixture"], local_batch["mixture"])
        assert torch_equal(remote_batch["target"], local_batch["target"])
        assert int(remote_batch["storage_retries"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("chunks_per_crop", [1, 2])
def test_zarr_mixer_fetches_byte_ranges_of_inner_chunks_not_whole_shards(s3_store, built_store, chunks_per_crop):
    """Bytes fetched per example against the compressed bytes of the frames the mixer asked the
    store for, with the chunk cache off (a large store rarely hits it). A crop of C frames at a
    random offset touches 1 + (C - 1) / chunk_frames inner chunks on average, so the ratio is at
    most about 1 + chunk_frames / crop_frames (benchmarks/bench_remote.py measures it at the
    default geometry; docs/performance.md)."""
    from vr_data.mixer import MixerConfig, ZarrMixerDataset

    crop = GEOMETRY.chunk_frames * chunks_per_crop
    # One example per batch: tensorstore reads a chunk that two examples of a batch share once.
    config = MixerConfig(crop_frames=crop, batch_size=1, seed=3, examples_per_epoch=48, silence_rule="keep",
                         proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
    dataset = ZarrMixerDataset(s3_store, config)
    dataset.store.cache_bytes = 0
    store = open_store(built_store)
    frames: dict[str, int] = {}
    for track in store.tracks:
        for name in track.arrays.values():
            frames[name] = frames.get(name, 0) + track.frames
    shards = {name: list((built_store / "zarr" / name / "c").glob("*/0/0/0")) for name in frames}
    bytes_per_frame = {name: sum(size for shard in shards[name] for _, size in chunk_spans(shard)) / frames[name]
                       for name in frames}
    requested = {"bytes": 0.0}
    read = dataset.store.read_many_into

    def counting(requests, outs):
        requests = list(requests)
        requested["bytes"] += sum((stop - start) * bytes_per_frame[store.track(track).arrays[source]]
                                  for track, source, start, stop in requests)
        return read(requests, outs)

    dataset.store.read_many_into = counting
    before, examples = remote.bytes_fetched(), 0
    for batch in dataset:
        examples += len(batch["index"])
        if examples >= 48:
            break
    fetched = (remote.bytes_fetched() - before) / examples
    crop_bytes = requested["bytes"] / examples
    all_shards = [shard for found in shards.values() for shard in found]
    ratio = fetched / crop_bytes
    print(f"\ncrop {crop} frames ({chunks_per_crop} chunks): {fetched:.0f} B fetched per example, crop stored "
          f"{crop_bytes:.0f} B, ratio {ratio:.2f} (expected about {1 + 1 / chunks_per_crop:.2f}); whole shard "
          f"{np.mean([s.stat().st_size for s in all_shards]):.0f} B")
    # Whole shard objects (4 chunks here) would give about 4 / chunks_per_crop.
    assert ratio < 1 + 1 / chunks_per_crop + 0.25


def torch_equal(left, right) -> bool:
    return bool((left == right).all())


@pytest.mark.slow
def test_wds_mixer_streams_tars_from_a_bucket(s3_store, built_store):
    from vr_data.mixer import MixerConfig, WdsMixerDataset

    config = MixerConfig(crop_frames=GEOMETRY.segment_frames, batch_size=4, seed=5, examples_per_epoch=8,
                         proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
    remote_batch = next(iter(WdsMixerDataset(s3_store, config)))
    local_batch = next(iter(WdsMixerDataset(built_store, config)))
    assert torch_equal(remote_batch["mixture"], local_batch["mixture"])


@pytest.mark.slow
def test_stats_then_training_and_resume_on_a_bucket_store(s3_store, tmp_path):
    import tomllib  # noqa: F401  (the config is text)

    from pipelines.vrtrain import app as vrtrain
    from test_train import TINY

    copy = "s3://vr-session-store/stores/train"
    copy_prefix("vr-session-store", "stores/corpus", "stores/train")
    stats = vrdata("stats", copy, "--workers", "0")
    assert stats.exit_code == 0, stats.output
    assert remote.is_file(remote.location(copy) / "stats.json")
    sets = [item for value in TINY + ["curriculum=[{crop_frames=32, batch_size=4, accumulation=1, steps=2}]",
                                      "mixer.normalisation=\"stats\""]
            for item in ("--set", value)]
    result = runner.invoke(vrtrain, ["run", "--store", copy, "--out", str(tmp_path / "run"), *sets])
    assert result.exit_code == 0, result.output
    assert "done: step 2" in result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["store"] == copy
    resumed = runner.invoke(vrtrain, ["run", "--resume", str(tmp_path / "run")])
    assert resumed.exit_code == 0 and "done: step 2, 0 steps" in resumed.output, resumed.output


# -- errors: one line naming the URL and the cause ------------------------------------------------


def _one_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_a_missing_bucket_is_one_line_naming_the_url(s3_server):
    _one_line(vrdata("verify", "s3://vr-no-such-bucket/store"), "s3://vr-no-such-bucket/store", "bucket does not exist")


def test_a_prefix_without_a_store_is_one_line(s3_bucket):
    _one_line(vrdata("verify", f"s3://{s3_bucket}/nothing"), f"s3://{s3_bucket}/nothing", "not a store")


def test_an_unreachable_endpoint_is_retried_then_one_line(s3_server, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(remote, "BACKOFF_SECONDS", 0.01)
    before = remote.retry_count()
    line = _one_line(vrdata("verify", "s3://vr-anywhere/store"), "s3://vr-anywhere/store",
                     f"cannot reach the endpoint http://127.0.0.1:{port}", f"after {remote.MAX_ATTEMPTS} tries")
    assert remote.retry_count() - before == remote.MAX_ATTEMPTS - 1, line


def test_missing_credentials_are_one_line(s3_server, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    _one_line(vrdata("verify", "s3://vr-anywhere/store"), "s3://vr-anywhere/store", "no credentials")


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def raising(error: Exception):
    def request():
        raise error
    return request


def test_access_denied_is_fatal_and_throttling_is_retried_and_counted(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_SECONDS", 0.001)
    target = remote.location("s3://vr-bucket/store/store.json")
    with pytest.raises(VRDataError, match=r"^s3://vr-bucket/store/store.json: access denied \(AccessDenied\)$"):
        remote.call(target, raising(_client_error("AccessDenied", 403)))
    answers = iter([_client_error("SlowDown", 503), _client_error("SlowDown", 503), b"ok"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    before = remote.retry_count()
    assert remote.call(target, flaky) == b"ok"
    assert remote.retry_count() - before == 2
    with pytest.raises(VRDataError, match="throttled by the server \\(SlowDown\\), after 6 tries"):
        remote.call(target, raising(_client_error("SlowDown", 503)))


def test_store_urls_outside_the_prefix_or_of_other_schemes_are_refused():
    with pytest.raises(VRDataError, match="'..' segments"):
        remote.location("s3://vr-bucket/a/../b")
    with pytest.raises(VRDataError, match="unsupported URL scheme"):
        remote.location("gs://vr-bucket/a")
    with pytest.raises(VRDataError, match="not a valid bucket name"):
        remote.location("s3://A_B/a")
    assert str(remote.location("s3://vr-bucket//a/b/")) == "s3://vr-bucket/a/b"
    with pytest.raises(VRDataError, match="leads outside the store's prefix"):
        remote.location("s3://vr-bucket/store") / "zarr/../../other"


@pytest.mark.slow
def test_a_disk_cache_serves_the_second_epoch_and_stays_within_its_bound(s3_store, tmp_path):
    from vr_data.mixer import MixerConfig, ZarrMixerDataset

    config = MixerConfig(crop_frames=GEOMETRY.chunk_frames, batch_size=4, seed=3, examples_per_epoch=16,
                         proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})

    def one_epoch(dataset) -> tuple[int, list]:
        before = remote.bytes_fetched()
        batches = [batch["mixture"].clone() for batch, _ in zip(dataset, range(4))]
        return remote.bytes_fetched() - before, batches

    plain = ZarrMixerDataset(s3_store, config)
    _, expected = one_epoch(plain)
    os.environ["VR_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        cached = ZarrMixerDataset(s3_store, config)
        first, first_batches = one_epoch(cached)
        second, second_batches = one_epoch(ZarrMixerDataset(s3_store, config))
    finally:
        del os.environ["VR_CACHE_DIR"]
    assert first > 0 and second == 0
    assert all(torch_equal(a, b) and torch_equal(a, c) for a, b, c in zip(expected, first_batches, second_batches))
    # A bound of two shards: the least recently used go, the two used last stay.
    cache = cached.store.disk_cache
    shards = sorted(cache.root.glob("zarr/*/c/*/0/0/0"))
    for order, shard in enumerate(shards):
        os.utime(shard, (1_000_000 + order, 1_000_000))
    cache.limit_bytes = sum(shard.stat().st_size for shard in shards[-2:])
    cache.evict()
    assert sorted(cache.root.glob("zarr/*/c/*/0/0/0")) == shards[-2:]


def test_a_damaged_shard_in_the_disk_cache_fails_its_checksum(s3_store, tmp_path):
    store = open_store(s3_store, cache_dir=tmp_path / "cache", cache_gb=1)
    track = store.tracks_by_role("pair")[0]
    store.read_frames(track, "mixture", 0, 8)
    shard = next(store.disk_cache.root.glob(f"zarr/{track.arrays['mixture']}/c/*/0/0/0"))
    offset, size = chunk_spans(shard)[0]
    data = bytearray(shard.read_bytes())
    data[offset + size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    fresh = open_store(s3_store, cache_dir=tmp_path / "cache", cache_gb=1)
    with pytest.raises(VRDataError, match="damaged Zarr chunk"):
        fresh.read_frames(track, "mixture", 0, GEOMETRY.chunk_frames)


@pytest.mark.slow
def test_preview_mix_of_a_bucket_store_with_a_disk_cache(s3_store, tmp_path):
    result = vrdata("preview-mix", s3_store, "--n", "2", "--out", str(tmp_path / "preview"), "--crop-frames", "32",
                    "--cache-dir", str(tmp_path / "cache"), "--cache-gb", "1")
    os.environ.pop("VR_CACHE_DIR", None)
    os.environ.pop("VR_CACHE_GB", None)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "preview" / "sheet.png").is_file()
    assert list((tmp_path / "cache").rglob("c/*/0/0/0"))  # shards went through the cache

