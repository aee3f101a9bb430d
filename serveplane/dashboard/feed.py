"""What the dashboard shows, built in the controller (pure: no Ray, no I/O).

The controller publishes one long-poll key, ``dashboard``, whose value is the page's whole
state as JSON-ready data (``DashboardFeed.snapshot``). Every proxy that has a viewer follows
that key and fans it out; N viewers cost the controller nothing more than one proxy does.

Time series come from the routers' cumulative figures (``router/stats.py``: answers, errors,
requests that never answered, a latency histogram per backend). A request that timed out,
expired in a queue or was refused counts in the rate and as an error; a cancel is neither. ``TrafficSeries`` keeps, per ``(router, backend)``, the
figures it last saw and turns the difference into one point per ``period_s``: request rate,
error rate, p50 and p99 latency (read from the histogram's buckets, so within a factor 1.5).
A router first seen after the first look counts whole (its figures started at zero); a
router that stops reporting adds nothing; the first look only sets the baseline, so a
controller restart never draws a spike of all history.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from serveplane.rollout.histogram import N_BUCKETS, quantile

SERIES_PERIOD_S = 2.0
SERIES_POINTS = 300          # ten minutes at SERIES_PERIOD_S
MAX_SCALING_EVENTS = 20
DASHBOARD_KEY = "dashboard"
# requests that never answered and count as failures (a router too old to report them: 0)
UNANSWERED_FAILURES = ("timed_out", "expired", "refused")


@dataclass
class _Point:
    at: float
    rate: float
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class _Seen:
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)


class TrafficSeries:
    """Request rate, error rate and p50/p99 latency per backend, one point per period."""

    def __init__(self, period_s: float = SERIES_PERIOD_S, points: int = SERIES_POINTS) -> None:
        self.period_s = period_s
        self._points = points
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._series: dict[str, collections.deque[_Point]] = {}
        self._last_at: float | None = None

    def due(self, now: float) -> bool:
        return self._last_at is None or now - self._last_at >= self.period_s

    def observe(self, now: float, reports: Iterable[tuple[str, Mapping[str, Any]]],
                backends: Iterable[str]) -> None:
        """Add one point per backend in ``backends`` from the routers' ``reports``
        (``(router_id, statistics)``); series of backends no longer listed are dropped."""
        first = self._last_at is None
        elapsed = self.period_s if self._last_at is None else max(1e-9, now - self._last_at)
        self._last_at = now
        totals: dict[str, _Seen] = {}
        seen_now: dict[tuple[str, str], _Seen] = {}
        for router_id, stats in reports:
            for backend, outcome in stats.get("backends", {}).items():
                unanswered = sum(int(outcome.get(k, 0) or 0) for k in UNANSWERED_FAILURES)
                current = _Seen(int(outcome.get("requests", 0)) + unanswered,
                                int(outcome.get("app_errors", 0)) + int(outcome.get("replica_failures", 0))
                                + unanswered,
                                list(outcome.get("latency", [0] * N_BUCKETS)))
                seen_now[(router_id, backend)] = current
                before = self._seen.get((router_id, backend), _Seen())
                if current.requests < before.requests:  # a new router under an old id
                    before = _Seen()
                acc = totals.setdefault(backend, _Seen())
                acc.requests += current.requests - before.requests
                acc.errors += max(0, current.errors - before.errors)
                for i, n in enumerate(current.latency[:N_BUCKETS]):
                    acc.latency[i] += max(0, n - before.latency[i])
        self._seen = seen_now
        wanted = set(backends)
        for backend in [b for b in self._series if b not in wanted]:
            del self._series[backend]
        if first:
            for backend in wanted:
                self._series[backend] = collections.deque(maxlen=self._points)
            return
        for backend in wanted:
            acc = totals.get(backend, _Seen())
            p50, p99 = quantile(acc.latency, 0.5), quantile(acc.latency, 0.99)
            point = _Point(now, acc.requests / elapsed,
                           acc.errors / acc.requests if acc.requests else None,
                           None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)
            self._series.setdefault(backend, collections.deque(maxlen=self._points)).append(point)

    def as_dict(self) -> dict[str, dict[str, list[Any]]]:
        return {backend: {"t": [round(p.at, 1) for p in points],
                          "rate": [_round(p.rate) for p in points],
                          "error_rate": [_round(p.error_rate) for p in points],
                          "p50_ms": [_round(p.p50_ms) for p in points],
                          "p99_ms": [_round(p.p99_ms) for p in points]}
                for backend, points in sorted(self._series.items())}


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def replica_view(tag: str, state: str, node_id: str | None, unhealthy: bool, num_gpus: float,
                 in_flight: int | None) -> dict[str, Any]:
    return {"tag": tag, "state": "unhealthy" if unhealthy and state == "RUNNING" else state,
            "node": node_id[:12] if node_id else None, "gpu": num_gpus, "in_flight": in_flight}


def shadow_agreement(shadows: Mapping[str, Mapping[str, Any]], backend: str) -> dict[str, Any] | None:
    """What routers say of the shadow copies sent to ``backend`` (None when none were sent)."""
    entry = shadows.get(backend)
    if not entry:
        return None
    return {"agreement": entry.get("agreement"), "compared": entry.get("compared", 0),
            "count": entry.get("count", 0), "errors": entry.get("errors", 0),
            "dropped": entry.get("dropped", 0)}


def build_snapshot(*, at: float, namespace: str, epoch: int, kv_store: str,
                   checkpoint_warning: str | None, fencing: str, refused: int,
                   backends: Mapping[str, dict[str, Any]], endpoints: Mapping[str, dict[str, Any]],
                   series: dict[str, dict[str, list[Any]]], scaling_events: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    """The page's state: plain JSON data, the same for every viewer."""
    return {"at": at, "namespace": namespace,
            "store": {"kv_store": kv_store, "epoch": epoch, "checkpoint_warning": checkpoint_warning,
                      "fencing": fencing, "refused": refused},
            "backends": {tag: {**b, "series": series.get(tag)} for tag, b in sorted(backends.items())},
            "endpoints": dict(sorted(endpoints.items())),
            "scaling_events": scaling_events[-MAX_SCALING_EVENTS:]}


def same_content(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Whether two snapshots differ only in their time stamp (nothing worth sending)."""
    return a is not None and {k: v for k, v in a.items() if k != "at"} == \
        {k: v for k, v in b.items() if k != "at"}
