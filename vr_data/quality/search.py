"""Near-duplicate search over many fingerprints with an inverted index: sub-quadratic.

`find_matches(fingerprints, owners)` returns every pair of fingerprints (files) that hold the
same audio, with the time offset between them and the matched duration. How:

1. the index: all landmarks `(hash, file, time)` of all files sorted by hash (one argsort);
   hashes found in more than `max_bucket` landmarks (a stop list: a pure tone, a click track)
   are left out, as a text search engine drops "the";
2. queries, a block of files at a time: each landmark of a query file finds its hash's bucket
   in the index (through the inverse of the sort permutation); every hit in a later file `j` votes for `(query, j, time in j - time
   in query)`; votes at one pair and offset are counted (`np.unique`) together with those of the
   two neighbouring offsets (a landmark moves by a frame when the audio is shifted by part of
   a hop);
3. a pair matches when its best offset has at least `min_votes` votes. Unrelated songs share a
   hash now and then, but at scattered offsets: 1 to 4 votes at the best offset for a minute of
   music (docs/performance.md), against hundreds for a copy.

Cost: each landmark meets the others of its hash bucket, so the work is the sum of the squared
bucket sizes, not the square of the number of files (measured on 30,000 tracks in
docs/performance.md). Memory: the index (12 bytes a landmark) plus one block's votes.
Files of one owner (the files of one item: a mixture contains its own stems) never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vr_data.dsp.fingerprint import FRAME_SECONDS

MIN_VOTES = 12
MAX_BUCKET = 2000
_OFFSET_SPAN = 1 << 22  # offsets in frames fit in +-2**21 frames (18 hours at 32 ms)


@dataclass(frozen=True)
class Match:
    """Two files with the same audio: the audio at `t` s in file `a` is at `t + offset_seconds`
    in file `b`; `matched_seconds` is the span of `a` where landmarks agree; `votes` the
    landmarks that agree at that offset (out of `a_landmarks` and `b_landmarks`)."""

    a: int
    b: int
    votes: int
    offset_seconds: float
    matched_seconds: float
    a_landmarks: int
    b_landmarks: int


def find_matches(
    fingerprints: Sequence[tuple[np.ndarray, np.ndarray]],
    owners: Sequence[int] | None = None,
    *,
    min_votes: int = MIN_VOTES,
    max_bucket: int = MAX_BUCKET,
    block_landmarks: int = 4_000_000,
) -> list[Match]:
    """Every matching pair `a < b` of `fingerprints` (`(hashes, times)` each), best offset only.

    `owners[i]` is the item of file `i` (files of one owner are never compared); None: all
    differ. `block_landmarks` bounds the query landmarks looked up at once (memory).
    """
    count = len(fingerprints)
    owners_array = np.arange(count) if owners is None else np.asarray(owners)
    sizes = np.array([len(hashes) for hashes, _ in fingerprints], dtype=np.int64)
    if count < 2 or sizes.sum() == 0:
        return []
    hashes = np.concatenate([np.asarray(h, np.uint32) for h, _ in fingerprints])
    times = np.concatenate([np.asarray(t, np.int32) for _, t in fingerprints])
    files = np.repeat(np.arange(count, dtype=np.int32), sizes)
    order = np.argsort(hashes, kind="stable")
    index_files, index_times = files[order], times[order]
    # Each landmark's bucket (its run of equal hashes in the sorted index) as [left, right):
    # found through the inverse permutation, not a binary search (3x faster: no cache misses).
    sorted_hashes = hashes[order]
    new_bucket = np.concatenate([[True], sorted_hashes[1:] != sorted_hashes[:-1]])
    bucket_starts = np.flatnonzero(new_bucket)
    bucket_ends = np.concatenate([bucket_starts[1:], [len(sorted_hashes)]])
    # Stop list: a bucket of more than `max_bucket` landmarks is looked up as empty.
    bucket_ends = np.where(bucket_ends - bucket_starts > max_bucket, bucket_starts, bucket_ends)
    bucket_of_sorted = np.cumsum(new_bucket) - 1
    bucket = np.empty_like(bucket_of_sorted)
    bucket[order] = bucket_of_sorted
    del sorted_hashes, new_bucket, bucket_of_sorted, order
    lefts, rights = bucket_starts[bucket], bucket_ends[bucket]

    matches: list[Match] = []
    starts = np.concatenate([[0], np.cumsum(sizes)])
    first = 0
    while first < count:
        last = first + 1
        while last < count and starts[last + 1] - starts[first] <= block_landmarks:
            last += 1
        span = slice(starts[first], starts[last])
        matches += _block_matches(lefts[span], rights[span], files[span], times[span], index_files, index_times,
                                  owners_array, sizes, min_votes)
        first = last
    matches.sort(key=lambda m: (m.a, m.b))
    return matches


def _block_matches(left, right, query_files, query_times, index_files, index_times,
                   owners, sizes, min_votes) -> list[Match]:
    hits = right - left
    if hits.sum() == 0:
        return []
    # Expand every query landmark into its hits: positions left..right-1 in the index.
    query = np.repeat(np.arange(len(left)), hits)
    position = np.arange(hits.sum()) - np.repeat(np.cumsum(hits) - hits, hits) + np.repeat(left, hits)
    other = index_files[position]
    mine = query_files[query]
    keep = (other > mine) & (owners[other] != owners[mine])
    query, other, mine = query[keep], other[keep], mine[keep]
    if len(query) == 0:
        return []
    offset = index_times[position[keep]].astype(np.int64) - query_times[query]
    key = (mine.astype(np.int64) * len(sizes) + other) * _OFFSET_SPAN + offset + _OFFSET_SPAN // 2
    unique, votes = np.unique(key, return_counts=True)
    # Votes of a key plus its neighbouring offsets (same pair: key +-1).
    smoothed = votes.copy()
    for step in (-1, 1):
        where = np.searchsorted(unique, unique + step)
        found = (where < len(unique)) & (unique[np.minimum(where, len(unique) - 1)] == unique + step)
        smoothed[found] += votes[where[found]]
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
    # The span of query times whose landmarks agree with each best offset (+-1 frame).
    earliest = np.full(len(best_keys), np.iinfo(np.int64).max)
    latest = np.full(len(best_keys), np.iinfo(np.int64).min)
    anchor_times = query_times[query].astype(np.int64)
    for step in (-1, 0, 1):
        where = np.searchsorted(best_keys, key + step)
        found = (where < len(best_keys)) & (best_keys[np.minimum(where, len(best_keys) - 1)] == key + step)
        np.minimum.at(earliest, where[found], anchor_times[found])
        np.maximum.at(latest, where[found], anchor_times[found])
    results = []
    for key_value, vote_count, start, stop in zip(best_keys, best_votes, earliest, latest):
        a, b = divmod(int(key_value // _OFFSET_SPAN), len(sizes))
        offset_frames = int(key_value % _OFFSET_SPAN) - _OFFSET_SPAN // 2
        matched = (int(stop) - int(start) + 1) * FRAME_SECONDS
        results.append(Match(a, b, int(vote_count), round(offset_frames * FRAME_SECONDS, 3), round(matched, 2),
                             int(sizes[a]), int(sizes[b])))
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
