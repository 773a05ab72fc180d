"""The build plan: which frames of which Zarr array each track owns, decided before decoding.

Tracks of a role are laid end to end along the frame axis. A track's reserve is its frame count
predicted from the manifest header (samples at the file's rate, resampled as soxr does, then
`StftConfig.frames_for`) plus `MARGIN_FRAMES`. A track whose reserve is a shard or more starts
on a shard boundary and owns whole shards (its reserve rounded up). Shorter tracks are packed:
consecutive short tracks of one role, split and manifest share one shard (a *pack*), each at
its own frame offset with its own unrounded reserve, and one build task builds the whole pack
(its key, `pack_{role}_{shard index}`, names its done-record and its tar). So no two build
tasks ever write the same shard, and a store of 2 s phrases costs what a store of songs does
per second of audio, not a shard, a tar and a done-record per phrase.
The plan depends only on the manifests (in the order given) and the configs; it is written to
`plan.json` before any audio is decoded, so a resumed build reuses it, and `--append` extends
it without moving a single existing track.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vr_data.store.codec import CodecConfig
from vr_data.errors import VRDataError
from vr_data.catalog.manifest import Item, Manifest, manifest_digest
from vr_data.dsp.stft import StftConfig
from vr_data.store.format import ROLE_SOURCES, WDS_COMPRESSIONS, Geometry, array_name, read_json  # noqa: F401  (Geometry re-exported)
from vr_data.io import atomic_write_json

PLAN_FORMAT = "vr-store-plan"
PLAN_VERSION = 2  # 2: short tracks packed into shared shards (`PlannedTrack.pack`); 1 is read too
# A pair item with a vocal source (MUSDB's vocals stem) also becomes a vocal track with this id
# suffix; scanned item ids never contain "_", so it cannot collide with an item.
DERIVED_VOCAL_SUFFIX = "_vocal"
# Track ids become file names and WebDataset keys: no dots (WebDataset splits names at the first
# dot), no path separators. Matched with fullmatch: `$` alone would let a trailing newline in.
TRACK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MARGIN_FRAMES = 2  # reserve beyond the predicted frames, for headers that undercount by a few samples


@dataclass(frozen=True)
class PlannedTrack:
    """A manifest item's place in the store: frames `[start_frame, start_frame + reserved_frames)`."""

    id: str
    role: str
    library: str
    manifest: str          # sha256 of its manifest
    split: str
    group: str | None
    duration: float        # seconds, from the manifest
    content: str           # digest of its files' sha256s: the same id with other audio is refused
    expected_frames: int
    start_frame: int
    reserved_frames: int
    pack: str | None = None  # the pack whose shard it shares; None: it owns whole shards

    @property
    def task_key(self) -> str:
        """The build task that writes it: its pack, or the track itself."""
        return self.pack or self.id

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "PlannedTrack":
        return cls(**{k: record.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ManifestRef:
    """A manifest that fed the store: its absolute `path` (so `verify` finds it from any working
    directory), sha256 of its bytes."""

    path: str
    sha256: str
    library: str
    role: str
    items: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BuildPlan:
    stft: StftConfig
    codec: CodecConfig
    geometry: Geometry
    manifests: list[ManifestRef] = field(default_factory=list)
    tracks: list[PlannedTrack] = field(default_factory=list)
    created: str = ""

    def frames_by_array(self) -> dict[str, int]:
        """Array name -> total frames (the array's length: whole shards); only roles that have tracks."""
        ends: dict[str, int] = {}
        for track in self.tracks:
            end = self._shard_end(track)
            for source in ROLE_SOURCES[track.role]:
                name = array_name(track.role, source)
                ends[name] = max(ends.get(name, 0), end)
        return ends

    def extend(self, manifests: list[Manifest]) -> list[PlannedTrack]:
        """Add the items of `manifests` not yet planned; returns the new tracks.

        An id already planned with the same audio is skipped (a manifest given again, or a
        rescan that added items); with other audio it is refused: a track cannot change in place.
        """
        planned = {track.id: track for track in self.tracks}
        known_manifests = {ref.sha256 for ref in self.manifests}
        next_free = self._next_free_by_role()
        shard = self.geometry.shard_frames
        # (role, split, manifest) -> [pack key, first frame, frames used]: packs of this call only,
        # so an append never writes into a shard an earlier build finished.
        open_packs: dict[tuple[str, str, str], list] = {}
        added: list[PlannedTrack] = []
        for manifest in manifests:
            digest = _manifest_sha(manifest)
            if digest not in known_manifests:
                self.manifests.append(ManifestRef(os.path.abspath(manifest.source_path), digest, manifest.library,
                                                  manifest.role, len(manifest.items)))
                known_manifests.add(digest)
            for item in sorted(manifest.items, key=lambda i: i.id):
                if not TRACK_ID.fullmatch(item.id):
                    raise VRDataError(manifest.source_path, f"item id {item.id!r} is not usable as a store key "
                                                            "(letters, digits, '-' and '_' only: no dots or slashes)")
                if item.role not in ROLE_SOURCES:
                    raise VRDataError(manifest.source_path, f"item {item.id} has unknown role {item.role!r}")
                for track_id, role in planned_roles(item):
                    content = item_content(item)
                    if track_id in planned:
                        if planned[track_id].content != content:
                            raise VRDataError(manifest.source_path, f"item {item.id} is already in the store with "
                                                                    "other audio; build a new store to change a track")
                        continue
                    expected = expected_frames(item, self.stft, role)
                    need = expected + MARGIN_FRAMES
                    pack = None
                    if need < shard:
                        key = (role, item.split, digest)
                        current = open_packs.get(key)
                        if current is None or current[2] + need > shard:
                            first = next_free.get(role, 0)
                            current = open_packs[key] = [f"pack_{role}_{first // shard}", first, 0]
                            next_free[role] = first + shard
                        pack, start, reserved = current[0], current[1] + current[2], need
                        current[2] += need
                    else:
                        start, reserved = next_free.get(role, 0), -(-need // shard) * shard
                        next_free[role] = start + reserved
                    track = PlannedTrack(
                        id=track_id, role=role, library=manifest.library, manifest=digest, split=item.split,
                        group=item.group, duration=round(item.duration, 6), content=content,
                        expected_frames=expected, start_frame=start, reserved_frames=reserved, pack=pack,
                    )
                    planned[track_id] = track
                    self.tracks.append(track)
                    added.append(track)
        return added

    def _next_free_by_role(self) -> dict[str, int]:
        ends: dict[str, int] = {}
        for track in self.tracks:
            ends[track.role] = max(ends.get(track.role, 0), self._shard_end(track))
        return ends

    def _shard_end(self, track: PlannedTrack) -> int:
        """The end of the last shard the track's frames touch (its pack's shard for a packed one)."""
        shard = self.geometry.shard_frames
        return -(-(track.start_frame + track.reserved_frames) // shard) * shard

    def to_json(self) -> dict:
        return {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "created": self.created,
            "stft": self.stft.to_dict(), "codec": self.codec.to_dict(), "geometry": self.geometry.to_dict(),
            "manifests": [ref.to_json() for ref in self.manifests],
            "tracks": [track.to_json() for track in self.tracks],
        }

    @classmethod
    def from_json(cls, record: dict, path: Path | None = None) -> "BuildPlan":
        if record.get("format") != PLAN_FORMAT:
            raise VRDataError(path, "not a build plan")
        if int(record.get("version", 1)) > PLAN_VERSION:
            raise VRDataError(path, f"build plan version {record['version']} is newer than this package's "
                                    f"{PLAN_VERSION}; build with a newer vr-data")
        return cls(
            stft=StftConfig.from_dict(record["stft"]), codec=CodecConfig.from_dict(record["codec"]),
            geometry=Geometry.from_dict(record["geometry"]),
            manifests=[ManifestRef(**ref) for ref in record["manifests"]],
            tracks=[PlannedTrack.from_json(track) for track in record["tracks"]],
            created=record.get("created", ""),
        )

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "BuildPlan":
        return cls.from_json(read_json(path), path)


def new_plan(stft: StftConfig, codec: CodecConfig, geometry: Geometry) -> BuildPlan:
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return BuildPlan(stft=stft, codec=codec, geometry=geometry, created=created)


def resampled_samples(samples: int, rate: int, target_rate: int) -> int:
    """Samples soxr returns when resampling `samples` from `rate` to `target_rate` Hz.

    soxr divides by its input/output rate ratio in double precision and rounds half up, so
    exact ties (e.g. 367.5 from 48 kHz) can fall either way; this reproduces its arithmetic
    (checked against soxr for 8-96 kHz inputs in tests/test_build.py).
    """
    if rate == target_rate:
        return samples
    return math.floor(samples / (rate / target_rate) + 0.5)


def source_samples(item: Item, source: str, sample_rate: int) -> int:
    """Samples of one source after decoding: sources of several files are cut to the shortest."""
    return min(resampled_samples(item.files[key].samples, item.files[key].sample_rate, sample_rate)
               for key in item.sources[source])


def expected_frames(item: Item, stft: StftConfig, role: str | None = None) -> int:
    """STFT frames the build will store for `item` as a track of `role` (default: the item's):
    its sources are cut to the shortest."""
    samples = min(source_samples(item, source, stft.sample_rate) for source in ROLE_SOURCES[role or item.role])
    return stft.frames_for(samples)


def planned_roles(item: Item) -> list[tuple[str, str]]:
    """The `(track id, role)` tracks an item becomes: itself, plus a vocal track for a pair with a
    vocal source (MUSDB), so those vocals join the vocal library the mixer draws from."""
    tracks = [(item.id, item.role)]
    if item.role == "pair" and "vocal" in item.sources:
        tracks.append((item.id + DERIVED_VOCAL_SUFFIX, "vocal"))
    return tracks


def item_content(item: Item) -> str:
    """A digest of the files an item is made of (their sha256s, keyed by role in the item)."""
    text = "|".join(f"{key}:{item.files[key].sha256}" for key in sorted(item.files))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _manifest_sha(manifest: Manifest) -> str:
    if manifest.source_path is None:
        raise VRDataError(None, f"manifest of {manifest.library} has no file; write it before building")
    return manifest_digest(manifest.source_path)
