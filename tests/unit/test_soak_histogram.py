"""skiff soak's latency histogram: every value in its bucket's bounds, percentiles within one
sub-bucket of the exact ones and never below them, max exact, merging adds."""

from __future__ import annotations

import math
import random

from services.soak.histogram import SUB_BUCKETS, Histogram, bucket_bounds, bucket_of


def test_every_value_lands_in_a_bucket_that_holds_it() -> None:
    rng = random.Random(7)
    values = list(range(0, 5000)) + [rng.randrange(1, 10**10) for _ in range(5000)]
    for value in values:
        low, high = bucket_bounds(bucket_of(value))
        assert low <= value <= high
        assert high - low + 1 <= max(1, low // SUB_BUCKETS + 1)  # relative width under 1/SUB_BUCKETS


def test_buckets_are_ordered_and_adjacent() -> None:
    previous_high = -1
    for index in range(0, 20 * SUB_BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        previous_high = high


def exact(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


def test_percentiles_are_close_to_the_exact_ones_and_never_below() -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(-3, 1.2) for _ in range(20000)]  # seconds, a long tail
    h = Histogram()
    for v in values:
        h.record(v)
    for p in (50, 95, 99, 99.9):
        truth = int(exact(values, p) * 1e6) / 1e6
        got = h.percentile(p)
        assert truth <= got <= truth * (1 + 1 / SUB_BUCKETS) + 1e-6, (p, truth, got)
    assert h.percentile(100) == h.max_us / 1e6 == int(max(values) * 1e6) / 1e6
    assert h.count == len(values)


def test_small_counts_and_empty() -> None:
    h = Histogram()
    assert h.percentile(99) == 0.0 and h.summary()["count"] == 0
    h.record(0.010)
    h.record(0.500)
    assert h.percentile(50) <= 0.0102 and h.percentile(50) >= 0.010
    assert h.percentile(99) == 0.5 and h.summary()["max"] == 0.5 and h.summary()["min"] == 0.01


def test_merge_is_the_sum() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 1000):
        (a if i % 2 else b).record(i / 1000)
        both.record(i / 1000)
    a.merge(b)
    assert a.counts == both.counts and a.count == both.count and a.max_us == both.max_us
    assert a.min_us == both.min_us
