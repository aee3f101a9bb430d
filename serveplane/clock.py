"""One injectable clock: every read of the time on the data path goes through one.

Owners take a ``Clock`` (default ``SYSTEM_CLOCK``) so that tests drive time
with a fake instead of sleeping. ``monotonic()`` measures durations;
``time()`` is wall-clock seconds, used where a value travels between
processes (deadlines).
"""

from __future__ import annotations

import time as _time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The process's real clocks."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()


SYSTEM_CLOCK: Clock = SystemClock()
