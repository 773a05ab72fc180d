"""Near-duplicate search over many fingerprints with a sorted hash index: sub-quadratic.

`find_matches(fingerprints, owners)` returns every pair of fingerprints (files) that hold the
same audio, with the time offset between them and the matched duration. How:

1. the index: one uint64 per landmark, `hash << 36 | position` (its place in the concatenation
   of all files, file by file), sorted with a plain sort (4x faster than an argsort). A bucket
   is a run of equal hashes, its landmarks in file order. Buckets of one landmark meet nothing
   and are dropped at once; buckets of more than `max_bucket` landmarks (a stop list: a pure
   tone, a click track) too, as a text search engine drops "the";
2. the self-join, a slice of buckets at a time: every two landmarks of one bucket in different
   files `a < b` (of different owners) vote for `(a, b, time in b - time in a)`;
3. votes at one pair and offset are counted (`np.unique`) together with those of the two
   neighbouring offsets (a landmark moves by a frame when the audio is shifted by part of a
   hop); a pair matches when its best offset has at least `min_votes` votes and the landmarks
   that agree fall in at least `min_seconds` distinct seconds of the audio (or half the shorter
   file's, when that is fewer). Unrelated songs share a hash now and then, but at scattered
   offsets: a few votes at the best offset for 30 s of music (docs/performance.md), against
   dozens to hundreds for a copy; the seconds rule keeps out votes bunched in a second or two
   (two songs from one generator that open on the same chord), which no copy, trim or excerpt
   of a few seconds gives.

Cost: a sort of one uint64 a landmark, passes linear in landmarks, and the landmark pairs that
share a hash: true copies, and chance collisions of the 28-bit hashes, whose number grows with
the square of the landmarks over 2**29 (4.7 M pairs among 50 M uniform landmarks, 42.6 M among
151 M: 30,000 tracks of 4 min). That term is quadratic with a small constant; measured on
3,000 to 30,000 tracks in docs/performance.md ("data quality"). Memory: 8 bytes a landmark for
the keys and 4 for the times, then the positions, files and times of the landmarks that share a
hash, and 12 bytes a voting pair; a slice bounds the self-join's own temporaries. Files of one
owner (the files of one item: a mixture contains its own stems) never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vr_data.dsp.fingerprint import FRAME_SECONDS, HASH_BITS, VERSION

MIN_VOTES = 16
MIN_SECONDS = 4
MAX_BUCKET = 500
_OFFSET_SPAN = 1 << 22  # offsets in frames fit in +-2**21 frames (37 hours at 64 ms)
_INDEX_BITS = 64 - HASH_BITS  # a landmark's position in the index key: up to 2**36 landmarks


@dataclass(frozen=True)
class Match:
    """Two files with the same audio: the audio at `t` s in file `a` is at `t + offset_seconds`
    in file `b`; `matched_seconds` is the span of `a` where landmarks agree, `agreeing_seconds`
    the distinct seconds of `a` that hold one; `votes` the landmarks that agree at that offset
    (out of `a_landmarks` and `b_landmarks`)."""

    a: int
    b: int
    votes: int
    offset_seconds: float
    matched_seconds: float
    a_landmarks: int
    b_landmarks: int
    agreeing_seconds: int = 0


def find_matches(
    fingerprints: Sequence[tuple[np.ndarray, np.ndarray]],
    owners: Sequence[int] | None = None,
    *,
    min_votes: int = MIN_VOTES,
    min_seconds: int = MIN_SECONDS,
    max_bucket: int = MAX_BUCKET,
    slice_landmarks: int = 4_000_000,
) -> list[Match]:
    """Every matching pair `a < b` of `fingerprints` (`(hashes uint32 (n,), times int32 (n,))`
    each), best offset only.

    `owners[i]` is the item of file `i` (files of one owner are never compared); None: all
    differ. `slice_landmarks` bounds the indexed landmarks self-joined at once (memory).
    """
    count = len(fingerprints)
    owners_array = np.arange(count) if owners is None else np.asarray(owners)
    sizes = np.array([len(hashes) for hashes, _ in fingerprints], dtype=np.int64)
    if count < 2 or sizes.sum() == 0:
        return []
    files, times, bucket_sizes = _index(fingerprints, sizes, max_bucket)
    if len(files) == 0:
        return []
    bucket_ends = np.cumsum(bucket_sizes)
    # later[i]: how many landmarks follow landmark i in its bucket.
    later = (np.repeat(bucket_ends, bucket_sizes) - np.arange(len(files)) - 1).astype(np.int32)

    votes, anchor_times = [], []
    first = 0  # the slice: whole buckets, about slice_landmarks landmarks
    while first < len(files):
        last = int(bucket_ends[min(np.searchsorted(bucket_ends, first + slice_landmarks, side="right"),
                                   len(bucket_ends) - 1)])
        key, anchor = _self_join(files[first:last], times[first:last], later[first:last], owners_array, count)
        votes.append(key)
        anchor_times.append(anchor)
        first = last
    matches = _matches(np.concatenate(votes), np.concatenate(anchor_times), sizes, min_votes)
    # The seconds each file's landmarks cover: a match need not agree in more than half the shorter file's.
    spans = np.array([(int(t.max()) - int(t.min()) + 1) * FRAME_SECONDS if len(t) else 0.0
                      for _, t in fingerprints])
    return [m for m in matches if m.agreeing_seconds >= min(min_seconds, 0.5 * min(spans[m.a], spans[m.b]))]


def _index(fingerprints, sizes: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The landmarks that share their hash with others, by hash then file: files int32 `(kept,)`,
    times int32 `(kept,)` and the sizes of their buckets int64 `(buckets,)`; buckets of more than
    `max_bucket` landmarks (the stop list) and of one landmark are left out."""
    total = int(sizes.sum())
    if total >= 1 << _INDEX_BITS:
        raise ValueError(f"{total} landmarks: the index holds at most 2**{_INDEX_BITS}")
    # One key per landmark, its hash above its position in the concatenation (file by file,
    # each in time order): sorting the keys sorts by hash, then by file and time, and a plain sort
    # of uint64 is 4x faster than an argsort. Filled a file at a time: no index-sized temporaries.
    keys = np.empty(total, np.uint64)
    times = np.empty(total, np.int32)
    start = 0
    for hashes, file_times in fingerprints:
        stop = start + len(hashes)
        hashes = np.asarray(hashes, np.uint32)
        if len(hashes) and int(hashes.max()) >> HASH_BITS:
            raise ValueError(f"fingerprint hashes must fit in {HASH_BITS} bits (fingerprint version {VERSION})")
        keys[start:stop] = hashes
        keys[start:stop] <<= np.uint64(_INDEX_BITS)
        keys[start:stop] |= np.arange(start, stop, dtype=np.uint64)
        times[start:stop] = file_times
        start = stop
    keys.sort()
    hashes = (keys >> np.uint64(_INDEX_BITS)).astype(np.uint32)
    # Most buckets hold one landmark, which meets nothing: keep those that share their hash first.
    same = hashes[1:] == hashes[:-1]
    shared = np.zeros(total, bool)
    shared[1:] = same
    shared[:-1] |= same
    del same
    keys, hashes = keys[shared], hashes[shared]
    del shared
    starts = np.flatnonzero(np.concatenate([[True], hashes[1:] != hashes[:-1]]))
    bucket_sizes = np.diff(np.append(starts, len(keys)))
    useful = bucket_sizes <= max_bucket  # the stop list
    position = (keys[np.repeat(useful, bucket_sizes)] & np.uint64((1 << _INDEX_BITS) - 1)).astype(np.int64)
    del keys, hashes, starts
    times = times[position]
    files = (np.searchsorted(np.cumsum(sizes), position, side="right")).astype(np.int32)
    del position
    return files, times, bucket_sizes[useful]


def _self_join(files, times, later, owners, count) -> tuple[np.ndarray, np.ndarray]:
    """The votes of every two landmarks of one bucket in files `a < b` of different owners:
    keys `(a * count + b) * _OFFSET_SPAN + offset` int64 `(pairs,)` (offset in frames, shifted
    to be positive) and the landmark's time in `a` int32 `(pairs,)`."""
    keys, anchors = [], []
    active = np.flatnonzero(later >= 1)
    distance = 1
    while len(active):  # landmark i with the landmark `distance` places later in its bucket
        other = active + distance
        a, b = files[active], files[other]
        differ = (a != b) & (owners[a] != owners[b])  # sorted by file within a bucket: a <= b
        mine, theirs = active[differ], other[differ]
        offset = times[theirs].astype(np.int64) - times[mine]
        keys.append((a[differ].astype(np.int64) * count + b[differ]) * _OFFSET_SPAN + offset + _OFFSET_SPAN // 2)
        anchors.append(times[mine])
        distance += 1
        active = active[later[active] >= distance]
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(keys), np.concatenate(anchors)


def _matches(key: np.ndarray, anchor_times: np.ndarray, sizes: np.ndarray, min_votes: int) -> list[Match]:
    """The best offset of each file pair from its votes (`_self_join`), when it has `min_votes`."""
    if len(key) == 0:
        return []
    unique, votes = np.unique(key, return_counts=True)
    # Votes of a key plus its neighbouring offsets (same pair: key +-1, its neighbours in `unique`).
    smoothed = votes.copy()
    adjacent = np.flatnonzero(unique[1:] == unique[:-1] + 1)
    smoothed[adjacent] += votes[adjacent + 1]
    smoothed[adjacent + 1] += votes[adjacent]
    strong = smoothed >= min_votes
    if not strong.any():
        return []
    candidates, candidate_votes = unique[strong], smoothed[strong]
    pair = candidates // _OFFSET_SPAN
    # The best offset of each pair: sort by pair, then by votes descending.
    order = np.lexsort((-candidate_votes, pair))
    pair, candidates, candidate_votes = pair[order], candidates[order], candidate_votes[order]
    best = np.concatenate([[True], pair[1:] != pair[:-1]])
    best_keys, best_votes = candidates[best], candidate_votes[best]
    # The span of times in `a` whose landmarks agree with each best offset (+-1 frame).
    earliest = np.full(len(best_keys), np.iinfo(np.int64).max)
    latest = np.full(len(best_keys), np.iinfo(np.int64).min)
    # A vote's best key is the first one >= its key - 1 (one best key per pair: they are far apart).
    where = np.minimum(np.searchsorted(best_keys, key - 1), len(best_keys) - 1)
    found = np.abs(best_keys[where] - key) <= 1
    where, agreeing = where[found], anchor_times[found].astype(np.int64)
    np.minimum.at(earliest, where, agreeing)
    np.maximum.at(latest, where, agreeing)
    # Distinct seconds of `a` holding an agreeing landmark, per best key.
    per_second = np.unique(where * (1 << 32) + agreeing // int(round(1 / FRAME_SECONDS)))
    seconds = np.bincount(per_second >> 32, minlength=len(best_keys))
    results = []
    count = len(sizes)
    for key_value, vote_count, start, stop, held in zip(best_keys, best_votes, earliest, latest, seconds):
        a, b = divmod(int(key_value // _OFFSET_SPAN), count)
        offset_frames = int(key_value % _OFFSET_SPAN) - _OFFSET_SPAN // 2
        matched = (int(stop) - int(start) + 1) * FRAME_SECONDS
        results.append(Match(a, b, int(vote_count), round(offset_frames * FRAME_SECONDS, 3), round(matched, 2),
                             int(sizes[a]), int(sizes[b]), int(held)))
    results.sort(key=lambda m: (m.a, m.b))
    return results


def connected_groups(count: int, matches: Sequence[Match]) -> list[list[int]]:
    """Files joined by matches (union-find), as sorted lists of file indices; singletons left out."""
    parent = list(range(count))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for match in matches:
        root_a, root_b = find(match.a), find(match.b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    groups: dict[int, list[int]] = {}
    for node in range(count):
        groups.setdefault(find(node), []).append(node)
    return [members for members in groups.values() if len(members) > 1]
