"""``Deadline``: a time limit around awaits, on any Python this package supports.

Kept out of the ``router`` and ``replica`` packages so both use it without importing the
other (importing ``serveplane`` must not import Ray: the CLI sets Ray's environment first).
"""

from __future__ import annotations

import asyncio
from typing import Any


class DeadlinePassed(TimeoutError):
    """Raised by ``Deadline`` (never by user code, whose own TimeoutError passes through)."""


class Deadline:
    """``with Deadline(seconds):`` around awaits: when the time is up the running task is
    cancelled and the block raises ``DeadlinePassed`` (``asyncio.timeout`` for 3.10 too).
    A cancellation from elsewhere stays a ``CancelledError``."""

    __slots__ = ("_delay", "_handle", "_task", "expired")

    def __init__(self, delay_s: float) -> None:
        self._delay = max(0.0, delay_s)
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self.expired = False

    def __enter__(self) -> Deadline:
        self._task = asyncio.current_task()
        self._handle = asyncio.get_running_loop().call_later(self._delay, self._expire)
        return self

    def _expire(self) -> None:
        if self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self.expired and kind is asyncio.CancelledError:
            uncancel = getattr(self._task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            raise DeadlinePassed() from None
