"""Latency histograms with fixed, log-spaced buckets: cheap to record on the hot path and
mergeable across routers by adding counts.

Bucket ``i`` counts latencies in ``(BOUNDS[i-1], BOUNDS[i]]``; the last bucket counts the
rest. The bounds run from 0.5 ms to about 70 s, each 1.5 times the previous, so a quantile
read from the buckets is within a factor 1.5 of the truth, enough to tell a canary three
times slower from its baseline.
"""

from __future__ import annotations

import bisect
from typing import Sequence

BOUNDS: tuple[float, ...] = tuple(0.0005 * 1.5 ** i for i in range(30))
N_BUCKETS = len(BOUNDS) + 1


def bucket_of(latency_s: float) -> int:
    return bisect.bisect_left(BOUNDS, latency_s)


def merge(into: list[int], other: Sequence[int]) -> None:
    for i, n in enumerate(other):
        into[i] += n


def quantile(buckets: Sequence[int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (None with no samples)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1] * 1.5
    return BOUNDS[-1] * 1.5
