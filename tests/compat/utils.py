"""Stand-ins for the Ray 1.x test helpers the ported tests import (``ray.test_utils``,
``ray.serve.utils``, ``ray.serve.constants``), written for serveplane."""

from __future__ import annotations

import asyncio
import random
import string
import time
from typing import Any, Callable

import ray

SERVE_PROXY_NAME = "serveplane_proxy"


def wait_for_condition(condition: Callable[[], Any], timeout: float = 10, retry_interval_ms: int = 100,
                       **kwargs: Any) -> None:
    """Poll ``condition(**kwargs)`` until it is true; ``RuntimeError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if condition(**kwargs):
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        time.sleep(retry_interval_ms / 1000)
    raise RuntimeError(f"condition {getattr(condition, '__name__', condition)} not met within "
                       f"{timeout}s (last error: {last_error!r})")


@ray.remote(num_cpus=0)
class SignalActor:
    """One event: ``wait`` blocks until ``send``."""

    def __init__(self) -> None:
        self.ready_event = asyncio.Event()

    def send(self, clear: bool = False) -> None:
        self.ready_event.set()
        if clear:
            self.ready_event.clear()

    async def wait(self, should_wait: bool = True) -> None:
        if should_wait:
            await self.ready_event.wait()


def format_actor_name(actor_name: str, controller_name: str | None = None, *modifiers: str) -> str:
    name = actor_name if controller_name is None else f"{actor_name}:{controller_name}"
    return ":".join([name, *modifiers])


def get_random_letters(length: int = 6) -> str:
    return "".join(random.choices(string.ascii_letters, k=length))


@ray.remote(num_cpus=0)
def block_until_http_ready(http_endpoint: str, backoff_time_s: float = 0.2, timeout: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(http_endpoint, timeout=5)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{http_endpoint} did not answer within {timeout}s") from None
            time.sleep(backoff_time_s)


class ReplicaConfig:
    """1.x's private replica config, which serveplane has no equivalent of; only the skipped
    ``test_create_backend_idempotent`` uses it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("Ray Serve 1.x's ReplicaConfig is private to its controller")
