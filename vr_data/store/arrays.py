"""The store's sharded Zarr v3 arrays, written and read through tensorstore.

Each array is float16 `(frames, channels=2, re/im=2, bins)`, chunked by `chunk_frames` frames
inside shards of `shard_frames` frames; the other axes are whole in every chunk. Writes always
cover whole shards (a partial shard write is a read-modify-write that races with other writers
and silently corrupts sharded Zarr, zarr-python #3682). zarr-python reads these arrays too.

Integrity: every inner chunk carries a crc32c checksum (`vr_data.store.codec.zarr_codecs_json`),
and every chunk is stored, zeros included (`store_data_equal_to_fill_value`), so every shard of
a track exists on disk: a missing shard file is damage (a deleted file), not silence. An array
says so in its `zarr.json` attributes (`{"vr_store": {"every_chunk_stored": true}}`); arrays of
stores built before have neither guarantee (`ArrayIntegrity`). The zero padding after a track
costs a few hundred bytes per chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorstore as ts

from vr_data.store.codec import CodecConfig, has_chunk_checksums, zarr_codecs_json
from vr_data.errors import VRDataError
from vr_data.store import remote
from vr_data.store.format import CHANNELS, REIM

DIMENSION_NAMES = ["frames", "channel", "reim", "bins"]
# zarr.json attributes of arrays written with every chunk stored (missing shard = damage).
INTEGRITY_ATTRIBUTES = {"vr_store": {"every_chunk_stored": True}}


@dataclass(frozen=True)
class ArrayIntegrity:
    """What a reader can check of an array: `chunk_checksums` (a crc32c per inner chunk) and
    `every_chunk_stored` (so a missing shard file within a track is damage)."""

    chunk_checksums: bool
    every_chunk_stored: bool


def array_integrity(path: Path) -> ArrayIntegrity:
    """The integrity guarantees of the array at `path`, from its `zarr.json`."""
    node = remote.location(path) / "zarr.json"
    try:
        metadata = json.loads(remote.read_text(node))
    except (OSError, json.JSONDecodeError) as error:
        raise VRDataError(node, f"cannot read array metadata ({_first_line(error)})") from None
    stored = bool(metadata.get("attributes", {}).get("vr_store", {}).get("every_chunk_stored", False))
    return ArrayIntegrity(chunk_checksums=has_chunk_checksums(metadata.get("codecs", [])), every_chunk_stored=stored)


def write_group(zarr_dir: Path) -> None:
    """The Zarr v3 group node `zarr/zarr.json` (arrays are its children)."""
    path = remote.location(zarr_dir) / "zarr.json"
    if not remote.is_file(path):
        remote.write_json(path, {"zarr_format": 3, "node_type": "group", "attributes": {}})


def array_metadata(frames: int, bins: int, chunk_frames: int, shard_frames: int, codec: CodecConfig) -> dict:
    """Zarr v3 array metadata: the chunk grid is the shard grid; inner chunks via sharding_indexed."""
    return {
        "shape": [int(frames), CHANNELS, REIM, int(bins)],
        "data_type": "float16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(shard_frames), CHANNELS, REIM, int(bins)]}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0.0,
        "codecs": zarr_codecs_json(codec, (int(chunk_frames), CHANNELS, REIM, int(bins))),
        "dimension_names": DIMENSION_NAMES,
        "attributes": INTEGRITY_ATTRIBUTES,
    }


def _spec(path: Path | remote.ObjectPath) -> dict:
    return {"driver": "zarr3", "kvstore": remote.kvstore(remote.location(path))}


def ensure_array(path: Path, frames: int, bins: int, chunk_frames: int, shard_frames: int,
                 codec: CodecConfig) -> None:
    """Create the array at `path` with `frames` frames, or grow an existing one to that size.

    Growing rewrites only `zarr.json` (`resize_metadata_only`): existing shards stay valid
    because the shard grid does not depend on the length.
    """
    path = remote.location(path)
    if remote.is_file(path / "zarr.json"):
        array = open_array(path)
        if array.shape[1:] != (CHANNELS, REIM, bins):
            raise VRDataError(path, f"array has shape {array.shape}, expected (frames, {CHANNELS}, {REIM}, {bins})")
        if array.shape[0] < frames:
            array.resize(exclusive_max=[frames, CHANNELS, REIM, bins], resize_metadata_only=True).result()
        return
    metadata = array_metadata(frames, bins, chunk_frames, shard_frames, codec)
    ts.open({**_spec(path), "metadata": metadata}, create=True, context=default_context(path)).result()


def open_array(path: Path, context: ts.Context | None = None, read_only: bool = False) -> ts.TensorStore:
    """Open an existing array; errors name the array path."""
    path = remote.location(path)
    if not remote.is_file(path / "zarr.json"):
        raise VRDataError(path, "Zarr array not found (zarr.json missing)")
    spec = _spec(path)
    if read_only:
        spec["recheck_cached_data"] = "open"
    else:
        # Zeros too: then every shard of a track exists, and a missing one is known to be damage.
        spec["store_data_equal_to_fill_value"] = True
    try:
        context = context if context is not None else default_context(path)
        return ts.open(spec, read=True, write=not read_only, context=context).result()
    except ValueError as error:
        raise VRDataError(path, f"cannot open Zarr array ({_first_line(error)})") from None


def default_context(path: Path | remote.ObjectPath, spec: dict | None = None) -> ts.Context:
    """A tensorstore context for arrays at `path`: `spec`'s resources, plus request retries
    with backoff for a bucket."""
    spec = dict(spec or {})
    if isinstance(path, remote.ObjectPath):
        spec.update(remote.s3_context_spec())
    return ts.Context(spec)


def shard_key(array_dir: Path | remote.ObjectPath, shard_index: int) -> Path | remote.ObjectPath:
    """The file of shard `shard_index` (default chunk key encoding, `c/` + indexes joined by `/`)."""
    return remote.location(array_dir) / "c" / str(shard_index) / "0" / "0" / "0"


def read_region(array: ts.TensorStore, start: int, stop: int, name: str) -> np.ndarray:
    """Frames `[start, stop)` as float16 `(frames, 2, 2, bins)`; errors name the array and frames."""
    try:
        return array[start:stop].read().result()
    except (ValueError, RuntimeError) as error:
        raise VRDataError(name, f"cannot read frames {start}:{stop} ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
