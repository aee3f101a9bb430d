"""Waiting on a condition with a deadline (tests never sleep as synchronization)."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             every: float = 0.02) -> Any:
    """Poll ``condition`` until it is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(every)
