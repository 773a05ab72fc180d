"""Object-storage benchmark: bytes fetched per training example from a store in a bucket.

Usage:
    python benchmarks/bench_remote.py [--seconds 30] [--examples 64] [--crops 256,512,1024]

Writes the demo corpus (`vrdata demo-corpus`: pairs, vocals, instrumentals of `--seconds` each),
builds it with the default STFT (n_fft 2048, 1025 bins), codec and geometry (256-frame inner
chunks, 4096-frame shards) into `s3://vr-bench/store` on a local S3 server (moto's, on 127.0.0.1),
then draws `--examples` examples from the Zarr mixer at each crop length with the chunk cache off
(a store larger than memory rarely hits it) and reports, per example:

- bytes fetched from the bucket (tensorstore's S3 byte counter: shard indexes plus inner-chunk
  ranges), against the crops' stored bytes (the frames the mixer asked the store for, counted at
  its reads, times the compressed bytes per frame of the array read: crops at a track's end are
  shorter, and vocals with rests compress better than mixtures),
  the ratio, and the ratio `1 + (chunk - 1) / crop` expected of whole crops at random frames;
- the same with the disk cache (`--cache-dir`): first pass, then the second pass (0 expected).

Byte counts do not depend on the machine's load; no timings are reported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--crops", default="256,512,1024")
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
    boto3.client("s3").create_bucket(Bucket="vr-bench")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            run(Path(scratch), args)
    finally:
        server.stop()


def run(scratch: Path, args) -> None:
    from vr_data.catalog.manifest import read_manifest, write_manifest
    from vr_data.catalog.scan import ScanOptions, scan
    from vr_data.mixer import MixerConfig, ZarrMixerDataset
    from vr_data.store import open_store, remote
    from vr_data.store.build import build_store
    from vr_data.testing.demo import write_demo_corpus

    roots = write_demo_corpus(scratch / "audio", seconds=args.seconds)
    manifests = []
    for layout, root in roots.items():
        result = scan(root, ScanOptions(layout=layout, valid_fraction=0.0))
        manifests.append(read_manifest(write_manifest(scratch / f"{layout}.jsonl", result.manifest)))
    url = "s3://vr-bench/store"
    built = build_store(manifests, url)
    store = open_store(url)
    # Compressed bytes per frame of each array (the zero padding after each track included: a
    # slight overestimate), so a crop's stored bytes are those of the arrays it is read from.
    frames: dict[str, int] = {}
    for track in store.tracks:
        for name in track.arrays.values():
            frames[name] = frames.get(name, 0) + track.frames
    bytes_per_frame = {name: sum(remote.list_sizes(remote.location(url) / "zarr" / name).values()) / count
                       for name, count in frames.items()}
    chunk = store.geometry.chunk_frames
    print(f"store: {len(store.tracks)} tracks, {store.hours() * 3600:.0f} s of audio, Zarr {built.zarr_bytes / 1e6:.1f} MB; "
          f"bytes per stored frame: " + ", ".join(f"{name} {value:.0f}" for name, value in sorted(bytes_per_frame.items()))
          + f"; inner chunk {chunk} frames, shard {store.geometry.shard_frames}")
    print(f"{'crop':>6} {'fetched/example':>16} {'crops stored':>13} {'ratio':>6} {'expected':>9}")
    for crop in (int(value) for value in args.crops.split(",")):
        # One example per batch: the reads of a batch are issued together, and tensorstore reads a
        # chunk two examples of one batch share once, which on a small store would flatter the figure.
        config = MixerConfig(crop_frames=crop, batch_size=1, seed=1, examples_per_epoch=args.examples,
                             silence_rule="keep", proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
        dataset = ZarrMixerDataset(url, config)
        dataset.store.cache_bytes = 0
        requested = _count_bytes(dataset.store, bytes_per_frame)
        fetched, examples = _draw(dataset, args.examples, remote)
        crop_bytes = requested["bytes"] / examples
        print(f"{crop:>6} {fetched / examples:>16.0f} {crop_bytes:>13.0f} {fetched / examples / crop_bytes:>6.2f} "
              f"{1 + (chunk - 1) / crop:>9.2f}")
    crop = 512
    config = MixerConfig(crop_frames=crop, batch_size=8, seed=1, examples_per_epoch=args.examples,
                         silence_rule="keep", proportions={"pair": 0.5, "augmented": 0.5, "pretrain": 0.0})
    cached = open_store(url, cache_dir=scratch / "cache", cache_gb=10)
    for label in ("first pass", "second pass"):
        dataset = ZarrMixerDataset(url, config)
        dataset.store = cached  # the same store object, with its disk cache
        fetched, examples = _draw(dataset, args.examples, remote)
        print(f"disk cache, crop {crop}, {label}: {fetched / examples:.0f} bytes fetched per example")


def _count_bytes(store, bytes_per_frame: dict[str, float]) -> dict:
    """Count the stored bytes of the frames read through `store.read_many_into` (what the mixer
    asks for), at each array's bytes per frame."""
    counter = {"bytes": 0.0}
    read = store.read_many_into

    def counting(requests, outs):
        requests = list(requests)
        counter["bytes"] += sum((stop - start) * bytes_per_frame[store.track(track).arrays[source]]
                                for track, source, start, stop in requests)
        return read(requests, outs)

    store.read_many_into = counting
    return counter


def _draw(dataset, count: int, remote) -> tuple[int, int]:
    before, examples = remote.bytes_fetched(), 0
    for batch in dataset:
        examples += len(batch["index"])
        if examples >= count:
            break
    return remote.bytes_fetched() - before, examples


if __name__ == "__main__":
    main()
