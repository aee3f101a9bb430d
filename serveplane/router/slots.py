"""``SlotTable``: how many requests this router has on each replica (pure; no Ray, no lock).

A replica takes at most ``max_concurrent_queries`` requests from one router; the replica
itself enforces the same limit across all routers (admission) and refuses the excess with
``ReplicaFullError``. A refusal holds the replica back for a short period that grows while
refusals go on (``ReplicaBackoff`` with small periods), so a full replica is not hammered;
its next answer, or the end of the period, makes it eligible again.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable

from serveplane.router.backoff import ReplicaBackoff

FULL_INITIAL_S = 0.005
FULL_MAX_S = 0.25


class SlotTable:
    __slots__ = ("_in_flight", "full")

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._in_flight: collections.defaultdict[str, int] = collections.defaultdict(int)
        kwargs = {"clock": clock} if clock is not None else {}
        self.full = ReplicaBackoff(initial_s=FULL_INITIAL_S, max_s=FULL_MAX_S, **kwargs)

    def load(self, name: str) -> int:
        return self._in_flight[name]

    def has_room(self, name: str, limit: int) -> bool:
        return self._in_flight[name] < limit

    def claim(self, name: str, n: int = 1) -> None:
        self._in_flight[name] += n

    def release(self, name: str) -> None:
        left = self._in_flight[name] - 1
        if left < 0:
            raise AssertionError(f"slot of replica {name} released more often than claimed")
        self._in_flight[name] = left

    def refused(self, name: str) -> float:
        """The replica said it is full: hold it back; returns the period."""
        return self.full.unavailable(name)

    def answered(self, name: str) -> None:
        self.full.answered(name)

    def total(self) -> int:
        return sum(self._in_flight.values())

    def sum_of(self, names: Iterable[str]) -> int:
        return sum(self._in_flight.get(n, 0) for n in names)

    def by_replica(self) -> dict[str, int]:
        return {k: v for k, v in self._in_flight.items() if v}

    def keep_only(self, names: Iterable[str]) -> None:
        self.full.keep_only(names)
