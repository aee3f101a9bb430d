"""Counters a router keeps: requests, retries, session moves, shadow outcomes, batch sizes.

Every figure here is a counter or a fixed-size table: a router lives as long as its
process, so nothing grows with the number of requests it has seen.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from serveplane.rollout.histogram import N_BUCKETS, bucket_of

RATE_WINDOW_S = 5.0
BATCH_SIZE_BUCKETS = 16  # bucket i counts sizes in [2**i, 2**(i+1)); the last one, the rest


@dataclass
class ShadowStats:
    count: int = 0             # shadows decided by the proportion (sent + dropped)
    errors: int = 0
    dropped: int = 0           # no free replica: the shadow was skipped, never queued
    latency_total_s: float = 0.0
    completed: int = 0
    compared: int = 0
    agreed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sent": self.count - self.dropped, "dropped": self.dropped,
                "completed": self.completed, "errors": self.errors,
                "avg_latency_s": self.latency_total_s / self.completed if self.completed else 0.0,
                "agreement": self.agreed / self.compared if self.compared else None,
                "compared": self.compared, "agreed": self.agreed}


class ShadowOutcome:
    """Pairs one shadow answer with its primary's, whichever finishes last compares."""

    __slots__ = ("stats", "lock", "clock", "started", "primary", "shadow", "primary_done", "shadow_done",
                 "shadow_ok", "primary_ok")

    def __init__(self, stats: ShadowStats, lock: threading.Lock,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.lock = lock
        self.clock = clock
        self.started = clock()
        self.primary: Any = None
        self.shadow: Any = None
        self.primary_done = False
        self.shadow_done = False
        self.shadow_ok = False
        self.primary_ok = False

    def on_shadow(self, value: Any) -> None:
        ok = not isinstance(value, BaseException)
        with self.lock:
            self.shadow, self.shadow_done, self.shadow_ok = value, True, ok
            self.stats.completed += 1
            self.stats.latency_total_s += self.clock() - self.started
            if not ok:
                self.stats.errors += 1
            self._compare()

    def on_primary(self, value: Any) -> None:
        with self.lock:
            self.primary, self.primary_done = value, True
            self.primary_ok = not isinstance(value, BaseException)
            self._compare()

    def _compare(self) -> None:
        # only two answers can agree: a failed primary or shadow is counted, not compared
        if self.primary_done and self.shadow_done and self.shadow_ok and self.primary_ok:
            self.stats.compared += 1
            try:
                same = bool(self.primary == self.shadow)
            except Exception:  # noqa: BLE001 - e.g. arrays with ambiguous truth values
                same = False
            if same:
                self.stats.agreed += 1


class Outcomes:
    """Per backend: how every request that reached it ended, and a latency histogram of its
    answers (fixed log-spaced buckets, see rollout/histogram.py): cumulative counters, so the
    controller gets any window by subtracting two reports and merges routers by adding.

    ``requests`` counts answers and replica failures (as before); the requests that never
    answered are counted apart, so a rollout's guards see each kind: ``timed_out`` (its
    deadline passed while it ran), ``cancelled`` (its caller went away), ``expired`` (it
    waited for a slot past its deadline and never ran), ``refused`` (back-pressure) and
    ``dependency_failed`` (an argument's error: not this backend's doing)."""

    __slots__ = ("_by_backend",)

    # entry: requests, app errors, replica failures, histogram, latency sum, then the rest
    _APART = ("timed_out", "cancelled", "expired", "refused", "dependency_failed")
    _INDEX = {name: 5 + i for i, name in enumerate(_APART)}

    def __init__(self) -> None:
        self._by_backend: dict[str, list[Any]] = {}

    def _entry(self, backend: str) -> list[Any]:
        entry = self._by_backend.get(backend)
        if entry is None:
            entry = self._by_backend[backend] = [0, 0, 0, [0] * N_BUCKETS, 0.0, *([0] * len(self._APART))]
        return entry

    def answered(self, backend: str, latency_s: float, ok: bool) -> None:
        entry = self._entry(backend)
        entry[0] += 1
        if not ok:
            entry[1] += 1
        entry[3][bucket_of(latency_s)] += 1
        entry[4] += latency_s

    def replica_failed(self, backend: str) -> None:
        entry = self._entry(backend)
        entry[0] += 1
        entry[2] += 1

    def ended(self, backend: str, outcome: str, latency_s: float, ok: bool = True) -> None:
        """One request of ``backend`` ended with ``outcome`` (``request.Outcome``'s values)."""
        if outcome == "answered":
            self.answered(backend, latency_s, ok)
        elif outcome == "replica_failed":
            self.replica_failed(backend)
        else:
            self._entry(backend)[self._INDEX["dependency_failed" if outcome == "failed" else outcome]] += 1

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {b: {"requests": e[0], "app_errors": e[1], "replica_failures": e[2], "latency": list(e[3]),
                    "latency_sum_s": e[4], **{name: e[i] for name, i in self._INDEX.items()}}
                for b, e in self._by_backend.items()}


@dataclass
class RouterStats:
    """Counters; mutated under the router's lock (or racing harmlessly on one int)."""

    requests: collections.defaultdict = field(default_factory=lambda: collections.defaultdict(int))
    retries: int = 0
    refused: int = 0     # attempts a replica refused unrun (full across routers, draining)
    cancelled: int = 0
    session_moves: int = 0
    back_pressure_rejections: int = 0
    shadows: dict[str, ShadowStats] = field(default_factory=dict)
    outcomes: Outcomes = field(default_factory=Outcomes)
    _last_rate_at: float = 0.0
    _last_counts: dict[str, int] = field(default_factory=dict)
    _last_rates: dict[str, float] = field(default_factory=dict)

    def shadow(self, backend: str) -> ShadowStats:
        stats = self.shadows.get(backend)
        if stats is None:
            stats = self.shadows[backend] = ShadowStats()
        return stats

    def rates(self, now: float) -> dict[str, float]:
        """Requests per second per backend since the previous call (at most every 0.1 s).

        Counting is a dict increment per request; the rate is a difference of counts, so the
        hot path keeps no per-request history.
        """
        elapsed = now - self._last_rate_at
        if self._last_rate_at and elapsed < 0.1:
            return dict(self._last_rates)
        counts = dict(self.requests)
        if self._last_rate_at and elapsed < RATE_WINDOW_S * 4:
            self._last_rates = {b: (c - self._last_counts.get(b, 0)) / elapsed for b, c in counts.items()}
        else:
            self._last_rates = {b: 0.0 for b in counts}
        self._last_rate_at, self._last_counts = now, counts
        return dict(self._last_rates)


@dataclass
class BatchSizes:
    """The sizes of the batches a router sent, as a histogram of fixed size (not a list)."""

    count: int = 0
    items: int = 0
    largest: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * BATCH_SIZE_BUCKETS)

    def add(self, size: int) -> None:
        self.count += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.buckets[min(size.bit_length() - 1, BATCH_SIZE_BUCKETS - 1)] += 1

    def as_dict(self) -> dict[str, Any]:
        histogram = {}
        for i, n in enumerate(self.buckets):
            if n:
                low, high = 2 ** i, 2 ** (i + 1) - 1
                label = (str(low) if low == high else f"{low}-{high}") if i < BATCH_SIZE_BUCKETS - 1 \
                    else f"{low}+"
                histogram[label] = n
        return {"batches": self.count, "max_batch_size_seen": self.largest,
                "avg_batch_size": self.items / self.count if self.count else 0.0,
                "batch_sizes": histogram}
