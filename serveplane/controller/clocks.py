"""The controller's one clock (``serveplane/clock.py``), from what its callers pass.

``ServeController`` has long taken two callables, ``clock`` (monotonic: the control loop,
router-report freshness, the autoscaler) and ``wall_clock`` (persisted instants: rollout
steps and history, scaling events, the dashboard); the simulator and tests pass a fake for
both. Either may also be a ``Clock``. Every part of the controller then reads the time from
the one ``Clock`` this returns.
"""

from __future__ import annotations

import time
from typing import Callable, Union

from serveplane.clock import SYSTEM_CLOCK, Clock

ClockLike = Union[Clock, Callable[[], float], None]


class CallableClock:
    """A ``Clock`` over two callables."""

    __slots__ = ("_monotonic", "_time")

    def __init__(self, monotonic: Callable[[], float], wall: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._time = wall

    def monotonic(self) -> float:
        return self._monotonic()

    def time(self) -> float:
        return self._time()


def _is_clock(value: object) -> bool:
    return callable(getattr(value, "monotonic", None)) and callable(getattr(value, "time", None))


def as_clock(clock: ClockLike, wall_clock: ClockLike = None) -> Clock:
    """One ``Clock``: ``clock``'s monotonic time and ``wall_clock``'s wall time (each a
    ``Clock`` or a callable; None: the system's)."""
    if clock is None and wall_clock is None:
        return SYSTEM_CLOCK
    if _is_clock(clock) and wall_clock is None:
        return clock  # type: ignore[return-value]
    monotonic: Callable[[], float] = (clock.monotonic if _is_clock(clock)  # type: ignore[union-attr]
                                      else clock or time.monotonic)  # type: ignore[assignment]
    if _is_clock(wall_clock):
        wall: Callable[[], float] = wall_clock.time  # type: ignore[union-attr]
    elif wall_clock is not None:
        wall = wall_clock  # type: ignore[assignment]
    else:
        wall = clock.time if _is_clock(clock) else time.time  # type: ignore[union-attr]
    return CallableClock(monotonic, wall)
