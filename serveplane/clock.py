"""``Clock``: the one way serveplane code reads the time, so tests run on fake time.

An owner (a router, a replica's admission, the controller's rollout and metrics code) is
given a clock and reads ``monotonic()`` for durations and ``time()`` for wall-clock
instants that travel between processes (deadlines). Nothing else calls ``time`` directly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The process's real clocks."""

    __slots__ = ()

    # the C functions themselves: reading the clock adds no Python frame on the hot path
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM_CLOCK = SystemClock()
