"""Per-replica counters and a sliding latency window."""

from __future__ import annotations

import collections
import time
from typing import Any

WINDOW_S = 10.0


class ReplicaMetrics:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.in_flight = 0
        self.total = 0
        self.succeeded = 0
        self.failed = 0
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (end time, latency)
        self._sessions: set[str] = set()

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, ok: bool, latency_s: float, session_id: str | None) -> None:
        self.in_flight -= 1
        self.total += 1
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        if session_id is not None:
            self._sessions.add(session_id)
        now = time.monotonic()
        self._recent.append((now, latency_s))
        self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()

    def snapshot(self, draining: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        self._trim(now)
        n = len(self._recent)
        return {
            "total_requests": self.total,
            "successful_requests": self.succeeded,
            "failed_requests": self.failed,
            "active_requests": self.in_flight,
            "request_rate": n / self.window_s,
            "avg_latency_s": (sum(lat for _, lat in self._recent) / n) if n else 0.0,
            "assigned_sessions": len(self._sessions),
            "draining": draining,
        }
