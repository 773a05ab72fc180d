"""Shared test fixtures: small synthetic audio written in the formats users have, and the small
stores built from it that several test modules read (`corpus`, `built_store`, `mixer_store`).

Fixtures live here rather than in a test module: a fixture imported into another module is a
second fixture, built once more for that module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vr_data.audio import write_audio
from vr_data.testing.demo import instrumental_track, vocal_track


def tone(seconds: float = 2.0, sample_rate: int = 44100, channels: int = 2, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """A few harmonics plus a little noise, float32 `(channels, samples)`."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 110.0 * (1 + seed % 7)
    signal = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6))
    out = np.stack([signal * (1 + 0.1 * c) for c in range(channels)]) + 0.01 * rng.standard_normal((channels, t.size))
    return (level * out / np.max(np.abs(out))).astype(np.float32)


def write_pair(root: Path, mixture_name: str, instrumental_name: str, seconds: float = 2.0,
               sample_rate: int = 44100, seed: int = 0, offset_samples: int = 0,
               instrumental_seconds: float | None = None) -> tuple[Path, Path]:
    """Write a mixture (instrumental + vocal) and its instrumental under mixtures/ and instruments/."""
    instrumental = instrumental_track(seconds, sample_rate, seed)
    vocal = vocal_track(seconds, sample_rate, seed)
    mixture = np.clip(instrumental + vocal, -1, 1)
    if offset_samples:
        instrumental = np.concatenate([np.zeros((2, offset_samples), np.float32), instrumental[:, :-offset_samples]], axis=1)
    if instrumental_seconds is not None:
        instrumental = instrumental_track(instrumental_seconds, sample_rate, seed)
    mixture_path = root / "mixtures" / mixture_name
    instrumental_path = root / "instruments" / instrumental_name
    write_audio(mixture_path, mixture, sample_rate)
    write_audio(instrumental_path, instrumental, sample_rate)
    return mixture_path, instrumental_path


def pytest_configure(config):
    """Run the suite under the fast allocator, as `vrtrain` runs (pipelines/allocator.py).

    The first pytest process re-executes itself once with tcmalloc preloaded (or glibc's
    tunables); captured output is handed back first so the new process writes to the terminal.
    VR_MALLOC=system keeps glibc's defaults.
    """
    from pipelines.allocator import ensure_fast_allocator

    capture = config.pluginmanager.getplugin("capturemanager")
    ensure_fast_allocator(before_exec=capture.stop_global_capturing if capture is not None else None)


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: its models are small, and two spinning OpenMP
    threads on two busy cores made the model tests several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Manifest paths by layout of a corpus written once per test session (do not modify); 40% of
    the items in valid."""
    from test_build_support import scan_corpus, write_corpus

    directory = tmp_path_factory.mktemp("corpus")
    return scan_corpus(write_corpus(directory / "audio"), directory / "manifests")


@pytest.fixture(scope="session")
def built_store(corpus, tmp_path_factory) -> Path:
    """A store of the whole `corpus`, built once per session (read only)."""
    from test_build_support import GEOMETRY, STFT, load
    from vr_data.store.build import build_store

    out = tmp_path_factory.mktemp("store") / "store"
    build_store(load(corpus), out, stft=STFT, geometry=GEOMETRY)
    return out


@pytest.fixture(scope="session")
def mixer_store(tmp_path_factory) -> Path:
    """A store with every item in train: 3 pairs, 3 vocals, 2 instrumentals, 1 pretraining
    track (the mixer tests; read only)."""
    from test_build_support import GEOMETRY, STFT, write_corpus
    from vr_data.catalog.manifest import read_manifest, write_manifest
    from vr_data.catalog.scan import ScanOptions, scan
    from vr_data.store.build import build_store

    directory = tmp_path_factory.mktemp("mixer")
    roots = write_corpus(directory / "audio")
    manifests = []
    for layout, root in roots.items():
        path = write_manifest(directory / f"{layout}.jsonl", scan(root, ScanOptions(layout=layout, valid_fraction=0.0)).manifest)
        manifests.append(read_manifest(path))
    build_store(manifests, directory / "store", stft=STFT, geometry=GEOMETRY)
    return directory / "store"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server for the session: moto's standalone server on 127.0.0.1 at a free port,
    with the environment a user would set (endpoint, region, a key pair) and instance-metadata
    lookups off. Yields the endpoint URL; stopped at the end of the session."""
    import os

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "vr-test-key",
                "AWS_SECRET_ACCESS_KEY": "vr-test-secret", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {name: os.environ.get(name) for name in [*settings, "AWS_PROFILE"]}
    os.environ.update(settings)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A new empty bucket on the session's S3 server; returns its name."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"vr-{name}-{len(request.session.items)}-{id(request) % 100000}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket
