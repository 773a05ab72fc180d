"""Names and records shared by the store builder and its readers (layout: docs/store.md).

A store is one directory: `store.json` (configs, `complete` flag), `plan.json` (which frames of
which Zarr array each track owns), `tracks.jsonl`, `rejects.jsonl`, `zarr/` (one sharded
float16 array per role and source, frames-major `(frames, channels=2, re/im=2, bins)`),
`wds/` (tar shards per role + `index.json`) and `.build/` (a done-record per build task: a
track, or a pack of short tracks sharing a shard and a tar).

Versions: 1 gave every track whole shards and its own tars, its last WebDataset segment
zero-padded to `segment_frames`; 2 packs short tracks (`TrackRecord.pack`) and stores every
track's last segment unpadded. Readers read both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vr_data import errors
from vr_data.errors import VRDataError
from vr_data.io import atomic_write_bytes, atomic_write_json, atomic_write_lines  # noqa: F401  (re-exported)
from vr_data.store import remote

STORE_FORMAT = "vr-store"
STORE_VERSION = 2
STORE_JSON = "store.json"
PLAN_JSON = "plan.json"
TRACKS_JSONL = "tracks.jsonl"
REJECTS_JSONL = "rejects.jsonl"
ZARR_DIR = "zarr"
WDS_DIR = "wds"
WDS_INDEX = "index.json"
BUILD_DIR = ".build"
DONE_DIR = "done"

# The sources each role stores, in the order they are decoded and written.
ROLE_SOURCES: dict[str, tuple[str, ...]] = {
    "pair": ("mixture", "instrumental"),
    "vocal": ("vocal",),
    "instrumental": ("instrumental",),
    "pretrain": ("audio",),
}
ROLES = tuple(ROLE_SOURCES)
CHANNELS = 2   # stereo; mono inputs are centred stereo
REIM = 2       # real and imaginary parts, in that order


def array_name(role: str, source: str) -> str:
    """Zarr array of a role's source: pairs keep two frame-aligned arrays, other roles one."""
    if role == "pair":
        return f"pair_{source}"
    return role


@dataclass(frozen=True)
class TrackRecord:
    """One built track, a line of `tracks.jsonl`.

    `frames` STFT frames are valid from `zarr_start` in every array of `arrays` (source name ->
    array name); the track owns `reserved_frames` frames there (whole shards, or its slot of a
    pack's shard), the rest is zeros. `wds_shards` are tar paths relative to `wds/`, holding its
    `segments` samples in order (a pack's tar holds the samples of all its tracks, track after
    track). `pack` is the pack it was built in (None: built alone). `duration` is seconds of
    audio at the store's sample rate.
    """

    id: str
    role: str
    library: str
    split: str
    group: str | None
    frames: int
    duration: float
    zarr_start: int
    reserved_frames: int
    arrays: dict[str, str]
    wds_shards: tuple[str, ...]
    segments: int
    manifest: str                     # sha256 of the manifest the item came from
    expected_frames: int              # frames predicted from the manifest's header durations
    pack: str | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def to_json(self) -> dict:
        return {
            "id": self.id, "role": self.role, "library": self.library, "split": self.split,
            "group": self.group, "frames": self.frames, "duration": round(self.duration, 6),
            "sources": list(self.arrays), "manifest": self.manifest, "expected_frames": self.expected_frames,
            "zarr": {"start": self.zarr_start, "reserved": self.reserved_frames, "arrays": dict(self.arrays)},
            "wds": {"shards": list(self.wds_shards), "segments": self.segments},
            **({"pack": self.pack} if self.pack is not None else {}),
        }

    @classmethod
    def from_json(cls, record: dict) -> "TrackRecord":
        return cls(
            id=record["id"], role=record["role"], library=record["library"], split=record["split"],
            group=record.get("group"), frames=int(record["frames"]), duration=float(record["duration"]),
            zarr_start=int(record["zarr"]["start"]), reserved_frames=int(record["zarr"]["reserved"]),
            arrays={source: record["zarr"]["arrays"][source] for source in record["sources"]},
            wds_shards=tuple(record["wds"]["shards"]),
            segments=int(record["wds"]["segments"]), manifest=record["manifest"],
            expected_frames=int(record["expected_frames"]), pack=record.get("pack"),
        )


@dataclass(frozen=True)
class WdsShard:
    """One tar of `wds/`: `path` relative to `wds/`, `bytes` and `sha256` of the whole file;
    `track` is the track it holds, or the pack whose tracks it holds."""

    path: str
    role: str
    track: str
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, record: dict) -> "WdsShard":
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class BuildReject:
    """A track refused at build time (a line of `rejects.jsonl`)."""

    id: str
    role: str
    library: str
    manifest: str                     # the manifest's path as given to the build
    paths: tuple[str, ...]            # its files, relative to the manifest's root
    code: str
    reason: str
    duration: float = 0.0

    def to_json(self) -> dict:
        return {"id": self.id, "role": self.role, "library": self.library, "manifest": self.manifest,
                "paths": list(self.paths), "code": self.code, "reason": self.reason,
                "duration": round(self.duration, 6)}

    @classmethod
    def from_json(cls, record: dict) -> "BuildReject":
        return cls(id=record["id"], role=record["role"], library=record["library"], manifest=record["manifest"],
                   paths=tuple(record["paths"]), code=record["code"], reason=record["reason"],
                   duration=float(record.get("duration", 0.0)))


@dataclass
class StoreMeta:
    """The content of `store.json`."""

    complete: bool
    stft: dict
    codec: dict
    geometry: dict
    manifests: list[dict]
    arrays: dict[str, dict]
    package_version: str
    created: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": STORE_FORMAT, "version": STORE_VERSION, "complete": self.complete,
            "stft": self.stft, "codec": self.codec, "segment_frames": self.geometry["segment_frames"],
            "geometry": self.geometry, "manifests": self.manifests, "arrays": self.arrays,
            "package_version": self.package_version, "created": self.created, **self.extra,
        }

    @classmethod
    def from_json(cls, record: dict, path: Path) -> "StoreMeta":
        if record.get("format") != STORE_FORMAT:
            raise VRDataError(path, f"not a vr-store (format is {record.get('format')!r})")
        if int(record.get("version", 0)) > STORE_VERSION:
            raise VRDataError(path, f"store version {record['version']} is newer than this package's {STORE_VERSION}")
        known = {"format", "version", "complete", "stft", "codec", "segment_frames", "geometry", "manifests",
                 "arrays", "package_version", "created"}
        return cls(
            complete=bool(record["complete"]), stft=record["stft"], codec=record["codec"],
            geometry=record["geometry"], manifests=record["manifests"], arrays=record["arrays"],
            package_version=record.get("package_version", ""), created=record.get("created", ""),
            extra={k: v for k, v in record.items() if k not in known},
        )


def read_json(path: Path | remote.ObjectPath) -> dict:
    """A JSON file or object as a dict; a missing or unparsable one is a VRDataError naming it."""
    try:
        return json.loads(remote.read_text(remote.location(path)))
    except FileNotFoundError:
        raise VRDataError(path, "file not found", errors.MISSING) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VRDataError(path, f"not valid JSON ({error})") from None


def read_store_meta(store: Path | remote.ObjectPath) -> StoreMeta | None:
    """`store.json` of `store` (a directory or an s3:// prefix), or None when there is none yet."""
    path = remote.location(store) / STORE_JSON
    if not remote.is_file(path):
        return None
    return StoreMeta.from_json(read_json(path), path)


WDS_COMPRESSIONS = ("none", "blosc-lz4")


@dataclass(frozen=True)
class Geometry:
    """Frame counts of the store's containers.

    `chunk_frames`: Zarr inner chunk (about one training crop); `shard_frames`: Zarr shard, the
    unit a task writes; `segment_frames`: one WebDataset sample; `wds_shard_bytes`: target size
    of one tar (a track's tar is split into parts beyond it); `wds`: write the WebDataset copy
    at all (False: a Zarr-only store, a quarter of the size; the streaming backend then refuses it);
    `wds_compression`: "none" (members are plain `.npy`) or "blosc-lz4" (each member is its `.npy`
    file compressed with blosc, byte shuffle + lz4: `{source}.npy.blosc`).
    """

    chunk_frames: int = 256
    shard_frames: int = 4096
    segment_frames: int = 256
    wds_shard_bytes: int = 256 * 2**20
    wds: bool = True
    wds_compression: str = "none"

    def __post_init__(self) -> None:
        if min(self.chunk_frames, self.shard_frames, self.segment_frames, self.wds_shard_bytes) <= 0:
            raise VRDataError(None, f"store geometry must be positive: {self}")
        if self.wds_compression not in WDS_COMPRESSIONS:
            raise VRDataError(None, f"wds_compression must be one of {', '.join(WDS_COMPRESSIONS)}, "
                                    f"not {self.wds_compression!r}")
        if self.shard_frames % self.chunk_frames or self.shard_frames % self.segment_frames:
            raise VRDataError(None, f"shard_frames={self.shard_frames} must be a multiple of chunk_frames="
                                    f"{self.chunk_frames} and segment_frames={self.segment_frames}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Geometry":
        sizes = {k: int(values[k]) for k in cls.__dataclass_fields__ if k not in ("wds", "wds_compression")}
        # Stores from before these fields have uncompressed tars.
        return cls(**sizes, wds=bool(values.get("wds", True)), wds_compression=str(values.get("wds_compression", "none")))
