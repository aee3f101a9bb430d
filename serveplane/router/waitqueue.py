"""``WaitQueue``: requests waiting for a slot, first come first served (pure; no lock).

Waiters are kept in arrival order; a freed slot goes to the first waiter that may use it
(``take_first``), so a new request never overtakes a queued one. ``reserve`` counts
requests per backend against ``max_queued_requests`` (the caller raises back-pressure
when it refuses); the count covers every waiting request, also one between two looks at
the queue, so it is kept apart from the deque itself.
"""

from __future__ import annotations

import collections
from typing import Callable, Generic, Iterator, TypeVar

W = TypeVar("W")


class WaitQueue(Generic[W]):
    __slots__ = ("_waiters", "_counts")

    def __init__(self) -> None:
        self._waiters: collections.deque[W] = collections.deque()
        self._counts: collections.Counter[str] = collections.Counter()

    # -- counts against max_queued_requests --------------------------------------------------
    def reserve(self, backend: str, limit: int) -> bool:
        if self._counts[backend] >= limit:
            return False
        self._counts[backend] += 1
        return True

    def unreserve(self, backend: str) -> None:
        left = self._counts[backend] - 1
        if left < 0:
            raise AssertionError(f"queue count of backend {backend!r} went below zero")
        if left:
            self._counts[backend] = left
        else:
            del self._counts[backend]

    def count(self, backend: str) -> int:
        return self._counts.get(backend, 0)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def total(self) -> int:
        return sum(self._counts.values())

    # -- waiters ------------------------------------------------------------------------------
    def append(self, waiter: W) -> None:
        self._waiters.append(waiter)

    def remove(self, waiter: W) -> bool:
        try:
            self._waiters.remove(waiter)
            return True
        except ValueError:
            return False  # handed over or woken already

    def take_first(self, fits: Callable[[W], bool]) -> W | None:
        """Remove and return the first waiter for which ``fits`` is true."""
        for waiter in self._waiters:
            if fits(waiter):
                self._waiters.remove(waiter)
                return waiter
        return None

    def take_all(self) -> list[W]:
        waiters = list(self._waiters)
        self._waiters.clear()
        return waiters

    def __bool__(self) -> bool:
        return bool(self._waiters)

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[W]:
        return iter(self._waiters)
