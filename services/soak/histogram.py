"""An HDR-style latency histogram: log-2 buckets each cut into linear sub-buckets.

Recording is O(1) and the memory bounded by the value range, whatever the number of samples, and a
percentile is within one sub-bucket (1/SUB_BUCKETS = 1.6 %) of the true value: the point of the
design, as in HdrHistogram, is that p99 and max of a million calls cost nothing to keep. Values are
integer microseconds; ``max`` and ``min`` are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUB_BUCKETS = 64  # linear cuts of each power of two: the relative precision of a percentile


def bucket_of(value_us: int) -> int:
    """The bucket index of a value: values below SUB_BUCKETS are their own bucket (exact)."""
    if value_us < SUB_BUCKETS:
        return max(value_us, 0)
    exponent = value_us.bit_length() - SUB_BUCKETS.bit_length()  # how far above the exact range
    return (exponent + 1) * SUB_BUCKETS + ((value_us >> exponent) - SUB_BUCKETS)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The [low, high] values a bucket holds."""
    if index < SUB_BUCKETS:
        return index, index
    exponent = index // SUB_BUCKETS - 1
    low = (SUB_BUCKETS + index % SUB_BUCKETS) << exponent
    return low, low + (1 << exponent) - 1


@dataclass(slots=True)
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    max_us: int = 0
    min_us: int = 0

    def record(self, seconds: float) -> None:
        value = max(int(seconds * 1_000_000), 0)
        index = bucket_of(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.min_us = value if self.count == 0 else min(self.min_us, value)
        self.count += 1
        self.max_us = max(self.max_us, value)

    def merge(self, other: Histogram) -> None:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        if other.count:
            self.min_us = other.min_us if self.count == 0 else min(self.min_us, other.min_us)
        self.count += other.count
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, p: float) -> float:
        """The value (seconds) at or below which ``p`` percent of the samples fall: its bucket's high
        bound, capped by the exact max (never reported lower than the truth)."""
        if self.count == 0:
            return 0.0
        rank = max(1, -(-self.count * p // 100))  # ceil: the p50 of 2 samples is the first
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max_us) / 1_000_000
        return self.max_us / 1_000_000

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "p50": self.percentile(50), "p95": self.percentile(95),
                "p99": self.percentile(99), "max": self.max_us / 1_000_000, "min": self.min_us / 1_000_000}
