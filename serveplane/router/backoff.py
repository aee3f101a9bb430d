"""``ReplicaBackoff``: replicas a router keeps away from for a while, not for good.

A replica that Ray reports *unavailable* (``ActorUnavailableError``: unreachable for now,
e.g. a network blip or a busy raylet) is not dead. The router stops picking it for a short
period that doubles with each consecutive unavailability (``INITIAL_S`` up to ``MAX_S``)
and starts again at ``INITIAL_S`` after the replica answers once. When the period is over
the replica is eligible again; the controller is never told (it decides deaths itself).

Invariants:
- unavailabilities reported while a replica is already backed off do not lengthen its
  period: the requests in flight on it all fail at once, and that is one event;
- state is kept only for replicas that failed since their last success, and only for
  replicas the router still lists (``keep_only``).

Pure: the clock is injected, so the timing is tested without waiting.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

INITIAL_S = 0.1
MAX_S = 5.0


class ReplicaBackoff:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 initial_s: float = INITIAL_S, max_s: float = MAX_S) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff periods are initial_s={initial_s!r}, max_s={max_s!r}; "
                             "they must satisfy 0 < initial_s <= max_s")
        self.clock = clock
        self.initial_s = initial_s
        self.max_s = max_s
        self._failures: dict[str, int] = {}   # actor name -> consecutive unavailabilities
        self._until: dict[str, float] = {}    # actor name -> end of its current period

    def unavailable(self, name: str) -> float:
        """``name`` was unreachable: back it off; returns the seconds until it is eligible."""
        now = self.clock()
        until = self._until.get(name)
        if until is not None and until > now:
            return until - now  # already backed off: same event
        failures = self._failures.get(name, 0)
        period = min(self.max_s, self.initial_s * 2 ** min(failures, 32))
        self._failures[name] = failures + 1
        self._until[name] = now + period
        return period

    def answered(self, name: str) -> None:
        """``name`` answered a call: its next unavailability starts from ``initial_s``."""
        if self._failures:
            self._failures.pop(name, None)
            self._until.pop(name, None)

    def blocked(self) -> frozenset[str]:
        """The replicas in a backoff period now (an ended period is dropped)."""
        if not self._until:
            return frozenset()
        now = self.clock()
        for name in [n for n, until in self._until.items() if until <= now]:
            del self._until[name]
        return frozenset(self._until)

    def next_end_in(self) -> float | None:
        """Seconds until the first current period ends, or ``None`` if none is running."""
        if not self.blocked():
            return None
        return max(0.0, min(self._until.values()) - self.clock())

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget replicas the router no longer lists."""
        listed = set(names)
        for table in (self._failures, self._until):
            for name in [n for n in table if n not in listed]:
                del table[name]

    def __repr__(self) -> str:
        blocked = sorted(self.blocked())
        return f"<ReplicaBackoff [backed off: {', '.join(blocked) or 'none'}]>"
