"""Mergeable statistics: merged moments and histograms equal numpy on the concatenation."""

from __future__ import annotations

import numpy as np
import pytest

from vr_data.stats.running import Histogram, RunningMoments


def _random_splits(rng, total: int, parts: int) -> list[int]:
    """Cut points of `total` rows into `parts` pieces, some of them empty on purpose."""
    cuts = np.sort(rng.integers(0, total + 1, size=parts - 1))
    return [0, *cuts.tolist(), total]


@pytest.mark.parametrize("shape", [(), (7,), (3, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_moments_equal_numpy_on_concatenation(shape, seed):
    rng = np.random.default_rng(seed)
    # A large offset with a small spread: the case where naive sum-of-squares loses every digit.
    values = 1e6 + rng.standard_normal((500, *shape)) * rng.uniform(0.1, 10.0, size=shape)
    cuts = _random_splits(rng, len(values), parts=9)
    partials = [RunningMoments.of(values[a:b], shape) for a, b in zip(cuts[:-1], cuts[1:])]
    partials.insert(3, RunningMoments(shape))  # an empty partial in the middle
    order = rng.permutation(len(partials))  # merge order must not matter
    merged = RunningMoments(shape)
    for index in order:
        merged.merge(partials[index])
    assert merged.count == len(values)
    np.testing.assert_allclose(merged.mean, values.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(merged.variance, values.var(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(merged.minimum, values.min(axis=0))
    np.testing.assert_array_equal(merged.maximum, values.max(axis=0))


def test_moments_of_tree_merge_equal_sequential_updates():
    rng = np.random.default_rng(5)
    values = rng.standard_normal((64, 4))
    sequential = RunningMoments((4,))
    for row in values:
        sequential.update(row[None])
    left = RunningMoments.of(values[:20], (4,)).merge(RunningMoments.of(values[20:41], (4,)))
    tree = left.merge(RunningMoments.of(values[41:], (4,)))
    np.testing.assert_allclose(tree.mean, sequential.mean, rtol=1e-13)
    np.testing.assert_allclose(tree.m2, sequential.m2, rtol=1e-12)
    np.testing.assert_allclose(tree.std, values.std(axis=0), rtol=1e-12)


def test_empty_moments_merge_as_identity_and_summarise_as_none():
    empty = RunningMoments()
    assert empty.summary() == {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    filled = RunningMoments.of(np.array([1.0, 2.0, 4.0]))
    assert RunningMoments().merge(filled).summary() == filled.summary()
    assert filled.merge(RunningMoments()).count == 3
    assert np.isnan(empty.variance)
    assert RunningMoments.of(np.array([])).count == 0


def test_moments_json_round_trip_and_shape_check():
    moments = RunningMoments.of(np.arange(12.0).reshape(4, 3), (3,))
    again = RunningMoments.from_json(moments.to_json())
    assert again.count == 4
    np.testing.assert_array_equal(again.mean, moments.mean)
    np.testing.assert_array_equal(again.m2, moments.m2)
    with pytest.raises(ValueError):
        moments.merge(RunningMoments((4,)))


def test_merged_histograms_equal_numpy_with_under_and_overflow():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 3, 1000), [-np.inf, np.inf, -10.0, 10.0, 5.0]])
    edges = np.linspace(-5, 5, 21)
    cuts = _random_splits(rng, len(values), parts=6)
    merged = Histogram(edges)
    for a, b in zip(cuts[:-1], cuts[1:]):
        merged.merge(Histogram(edges).update(values[a:b]))
    inside = values[(values >= -5) & (values <= 5)]
    np.testing.assert_array_equal(merged.counts, np.histogram(inside, bins=edges)[0])
    assert merged.underflow == int(np.sum(values < -5))
    assert merged.overflow == int(np.sum(values > 5))
    assert merged.total == len(values)
    assert merged.counts[-1] >= 1  # 5.0, the last edge, is counted in the last bin as np.histogram does


def test_histogram_refuses_nan_and_different_edges():
    histogram = Histogram.linear(0, 1, 4)
    with pytest.raises(ValueError):
        histogram.update([np.nan])
    with pytest.raises(ValueError):
        histogram.merge(Histogram.linear(0, 1, 5))
    with pytest.raises(ValueError):
        Histogram(np.array([0.0, 0.0, 1.0]))
    again = Histogram.from_json(histogram.update([0.1, 0.9, 2.0]).to_json())
    assert again.counts.tolist() == [1, 0, 0, 1] and again.overflow == 1
