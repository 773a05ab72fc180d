"""Mergeable summaries: running moments and fixed-bin histograms.

Statistics over libraries larger than memory are computed in many tasks (dask workers, chunks
of a store) and merged. Both summaries here merge exactly: `RunningMoments` keeps count, mean
and M2 (sum of squared deviations) per element and merges with Chan, Golub and LeVeque's
parallel formula, so the merged mean/variance equal numpy's on the concatenated data up to
float64 rounding, whatever the split; `Histogram` keeps integer counts over fixed edges, so
merging is addition. Empty partials merge as identities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunningMoments:
    """Count, mean, M2, min and max of a stream of values of shape `shape`, float64.

    `shape` is `()` for scalars (loudness per item) or e.g. `(bins,)` for per-frequency-bin
    statistics; `update` takes a batch `(n, *shape)`. `count` is the number of rows seen.
    """

    shape: tuple[int, ...] = ()
    count: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]
    minimum: np.ndarray = field(default=None)  # type: ignore[assignment]
    maximum: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.shape = tuple(int(size) for size in self.shape)
        if self.mean is None:
            self.mean = np.zeros(self.shape)
            self.m2 = np.zeros(self.shape)
            self.minimum = np.full(self.shape, np.inf)
            self.maximum = np.full(self.shape, -np.inf)

    @classmethod
    def of(cls, values: np.ndarray, shape: tuple[int, ...] = ()) -> "RunningMoments":
        """Moments of a batch `(n, *shape)` (a 1-d array for scalars)."""
        moments = cls(shape)
        moments.update(values)
        return moments

    def update(self, values: np.ndarray) -> "RunningMoments":
        """Add a batch of rows `(n, *shape)`; returns self."""
        values = np.asarray(values)
        values = values.reshape((-1, *self.shape)) if values.size else values.reshape((0, *self.shape))
        count = values.shape[0]
        if count == 0:
            return self
        # Two passes over the batch in float64: the batch mean, then squared deviations from it,
        # which stays accurate where the one-pass sum of squares loses digits.
        mean = np.mean(values, axis=0, dtype=np.float64)
        m2 = np.sum(np.square(values - mean, dtype=np.float64), axis=0)
        batch = RunningMoments(self.shape, count, mean, m2,
                               np.min(values, axis=0).astype(np.float64), np.max(values, axis=0).astype(np.float64))
        self.merge(batch)
        return self

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Fold `other` into self (Chan et al.); returns self."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge moments of shape {other.shape} into {self.shape}")
        if other.count == 0:
            return self
        if self.count == 0:
            self.count = other.count
            self.mean, self.m2 = np.array(other.mean, dtype=np.float64), np.array(other.m2, dtype=np.float64)
            self.minimum, self.maximum = np.array(other.minimum, np.float64), np.array(other.maximum, np.float64)
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / total)
        self.minimum = np.minimum(self.minimum, other.minimum)
        self.maximum = np.maximum(self.maximum, other.maximum)
        self.count = total
        return self

    @property
    def variance(self) -> np.ndarray:
        """Population variance (ddof=0), as `np.var`; NaN when empty."""
        return self.m2 / self.count if self.count else np.full(self.shape, np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    def summary(self) -> dict:
        """JSON-ready scalars: count, mean, std, min, max (None when empty). Scalar moments only."""
        if self.shape != ():
            raise ValueError("summary() is for scalar moments; use to_json() for arrays")
        if self.count == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.count, "mean": float(self.mean), "std": float(self.std),
                "min": float(self.minimum), "max": float(self.maximum)}

    def to_json(self) -> dict:
        """Everything needed to merge again later (lists of floats for arrays)."""
        return {"shape": list(self.shape), "count": self.count, "mean": np.asarray(self.mean).tolist(),
                "m2": np.asarray(self.m2).tolist(), "min": np.asarray(self.minimum).tolist(),
                "max": np.asarray(self.maximum).tolist()}

    @classmethod
    def from_json(cls, record: dict) -> "RunningMoments":
        return cls(tuple(record["shape"]), int(record["count"]), np.asarray(record["mean"], np.float64),
                   np.asarray(record["m2"], np.float64), np.asarray(record["min"], np.float64),
                   np.asarray(record["max"], np.float64))


@dataclass
class Histogram:
    """Integer counts of scalar values over fixed bin `edges` (ascending, `bins + 1` of them).

    Bins are half-open `[edges[i], edges[i+1])` except the last, which includes its right edge
    (as `np.histogram`). Values below the first edge (including -inf) count in `underflow`,
    above the last (including +inf) in `overflow`; NaN is refused.
    """

    edges: np.ndarray
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    underflow: int = 0
    overflow: int = 0

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size < 2 or np.any(np.diff(self.edges) <= 0):
            raise ValueError("histogram edges must be at least two strictly ascending values")
        if self.counts is None:
            self.counts = np.zeros(self.edges.size - 1, dtype=np.int64)
        self.counts = np.asarray(self.counts, dtype=np.int64)

    @classmethod
    def linear(cls, low: float, high: float, bins: int) -> "Histogram":
        """`bins` equal bins from `low` to `high`."""
        return cls(np.linspace(low, high, bins + 1))

    @property
    def total(self) -> int:
        """Values counted, in range or not."""
        return int(self.counts.sum()) + self.underflow + self.overflow

    def update(self, values) -> "Histogram":
        values = np.asarray(values, dtype=np.float64).ravel()
        if np.isnan(values).any():
            raise ValueError("histogram values must not be NaN")
        below = values < self.edges[0]
        above = values > self.edges[-1]
        self.underflow += int(below.sum())
        self.overflow += int(above.sum())
        inside = values[~below & ~above]
        self.counts += np.histogram(inside, bins=self.edges)[0]
        return self

    def merge(self, other: "Histogram") -> "Histogram":
        if other.edges.shape != self.edges.shape or not np.array_equal(other.edges, self.edges):
            raise ValueError("cannot merge histograms with different edges")
        self.counts = self.counts + other.counts
        self.underflow += other.underflow
        self.overflow += other.overflow
        return self

    def to_json(self) -> dict:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(),
                "underflow": self.underflow, "overflow": self.overflow}

    @classmethod
    def from_json(cls, record: dict) -> "Histogram":
        return cls(np.asarray(record["edges"]), np.asarray(record["counts"]), int(record["underflow"]),
                   int(record["overflow"]))
