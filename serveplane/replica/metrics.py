"""Per-replica counters, a sliding window of rate and latency, and recent sessions.

Memory is bounded whatever the traffic, because a replica lives for weeks:

- rate and latency over the last ``window_s`` are kept as ``BUCKETS`` time buckets
  (count and latency sum each), not one entry per request;
- sessions are those seen in the last ``session_window_s`` (``assigned_sessions``), at most
  ``max_sessions`` of them: past that, the least recently seen is forgotten first.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

WINDOW_S = 10.0
BUCKETS = 10
SESSION_WINDOW_S = 600.0
MAX_SESSIONS = 10_000


class ReplicaMetrics:
    def __init__(self, window_s: float = WINDOW_S, session_window_s: float = SESSION_WINDOW_S,
                 max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.session_window_s = session_window_s
        self.max_sessions = max_sessions
        self.clock = clock
        self.in_flight = 0
        self.total = 0
        self.succeeded = 0
        self.failed = 0
        self._bucket_s = window_s / BUCKETS
        # [bucket index, requests, latency sum], oldest first; at most BUCKETS + 1 of them
        self._buckets: collections.deque[list] = collections.deque()
        # session id -> when last seen, least recently seen first
        self._sessions: collections.OrderedDict[str, float] = collections.OrderedDict()

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, ok: bool, latency_s: float, session_id: str | None) -> None:
        self.in_flight -= 1
        self.total += 1
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        now = self.clock()
        if session_id is not None:
            self._sessions[session_id] = now
            self._sessions.move_to_end(session_id)
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        index = int(now // self._bucket_s)
        if self._buckets and self._buckets[-1][0] == index:
            bucket = self._buckets[-1]
            bucket[1] += 1
            bucket[2] += latency_s
        else:
            self._buckets.append([index, 1, latency_s])
        self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = int((now - self.window_s) // self._bucket_s)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()
        cutoff = now - self.session_window_s
        while self._sessions:
            session_id, seen = next(iter(self._sessions.items()))
            if seen >= cutoff:
                break
            del self._sessions[session_id]

    def snapshot(self, draining: bool = False) -> dict[str, Any]:
        self._trim(self.clock())
        n = sum(b[1] for b in self._buckets)
        latency = sum(b[2] for b in self._buckets)
        return {
            "total_requests": self.total,
            "successful_requests": self.succeeded,
            "failed_requests": self.failed,
            "active_requests": self.in_flight,
            "request_rate": n / self.window_s,
            "avg_latency_s": latency / n if n else 0.0,
            "assigned_sessions": len(self._sessions),
            "draining": draining,
        }

    def footprint(self) -> dict[str, int]:
        """How many entries the window and the sessions hold (bounded; for tests and repr)."""
        return {"buckets": len(self._buckets), "sessions": len(self._sessions)}
