"""Counters a router keeps: requests, retries, session moves, shadow outcomes."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

RATE_WINDOW_S = 5.0


@dataclass
class ShadowStats:
    count: int = 0
    errors: int = 0
    dropped: int = 0           # no free replica: the shadow was skipped, never queued
    latency_total_s: float = 0.0
    completed: int = 0
    compared: int = 0
    agreed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "errors": self.errors, "dropped": self.dropped,
                "avg_latency_s": self.latency_total_s / self.completed if self.completed else 0.0,
                "agreement": self.agreed / self.compared if self.compared else None,
                "compared": self.compared}


class ShadowOutcome:
    """Pairs one shadow answer with its primary's, whichever finishes last compares."""

    __slots__ = ("stats", "lock", "started", "primary", "shadow", "primary_done", "shadow_done",
                 "shadow_ok")

    def __init__(self, stats: ShadowStats, lock: threading.Lock) -> None:
        self.stats = stats
        self.lock = lock
        self.started = time.monotonic()
        self.primary: Any = None
        self.shadow: Any = None
        self.primary_done = False
        self.shadow_done = False
        self.shadow_ok = False

    def on_shadow(self, value: Any) -> None:
        ok = not isinstance(value, BaseException)
        with self.lock:
            self.shadow, self.shadow_done, self.shadow_ok = value, True, ok
            self.stats.completed += 1
            self.stats.latency_total_s += time.monotonic() - self.started
            if not ok:
                self.stats.errors += 1
            self._compare()

    def on_primary(self, value: Any) -> None:
        with self.lock:
            self.primary, self.primary_done = value, True
            self._compare()

    def _compare(self) -> None:
        if self.primary_done and self.shadow_done and self.shadow_ok:
            self.stats.compared += 1
            try:
                same = bool(self.primary == self.shadow)
            except Exception:  # noqa: BLE001 - e.g. arrays with ambiguous truth values
                same = False
            if same:
                self.stats.agreed += 1


@dataclass
class RouterStats:
    requests: int = 0
    retries: int = 0
    session_moves: int = 0
    back_pressure_rejections: int = 0
    shadows: dict[str, ShadowStats] = field(default_factory=dict)
    _recent: collections.deque = field(default_factory=collections.deque)

    def record_request(self, backend: str, now: float) -> None:
        self.requests += 1
        self._recent.append((now, backend))

    def rates(self, now: float) -> dict[str, float]:
        cutoff = now - RATE_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        counts: dict[str, int] = {}
        for _, backend in self._recent:
            counts[backend] = counts.get(backend, 0) + 1
        return {b: c / RATE_WINDOW_S for b, c in counts.items()}
