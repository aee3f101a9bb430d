"""The proxy's bounds: per-key token buckets, and admission of requests and their bodies.

Invariants (``Admission``, one per proxy, used from its event loop only):

- at most ``max_in_flight`` requests are past admission at once; the next one is refused
  (503) before anything of it is read;
- the bodies held at once total at most ``max_buffered_bytes``: a body is reserved before it
  is read (its Content-Length, or chunk by chunk without one) and released when its request
  is answered, so N large or slow uploads cost at most that much memory, not N bodies.

``TokenBuckets``: a bucket per key refilled at ``rate`` tokens a second up to ``burst``;
``take`` says how long until the next token when the bucket is empty. At most
``max_buckets`` are kept (least recently used dropped: a dropped bucket comes back full).
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable


class TokenBuckets:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_buckets: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_buckets
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"<TokenBuckets {self.rate:g}/s burst {self.burst} [buckets: {len(self._buckets)}]>"

    def take(self, key: str) -> float:
        """0.0 when a token was taken; else the seconds until one will be there."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


class Admission:
    def __init__(self, max_in_flight: int, max_buffered_bytes: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_buffered_bytes = max_buffered_bytes
        self.in_flight = 0
        self.buffered_bytes = 0
        self.peak_in_flight = 0
        self.peak_buffered_bytes = 0

    def __repr__(self) -> str:
        return (f"<Admission [in flight: {self.in_flight}/{self.max_in_flight} | bodies: "
                f"{self.buffered_bytes}/{self.max_buffered_bytes} bytes]>")

    def enter(self) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def reserve(self, n: int) -> bool:
        if self.buffered_bytes + n > self.max_buffered_bytes:
            return False
        self.buffered_bytes += n
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
        return True

    def release(self, n: int) -> None:
        self.buffered_bytes -= n

    def statistics(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "max_concurrent_requests": self.max_in_flight,
                "peak_in_flight": self.peak_in_flight, "buffered_body_bytes": self.buffered_bytes,
                "max_buffered_body_bytes": self.max_buffered_bytes,
                "peak_buffered_body_bytes": self.peak_buffered_bytes}
