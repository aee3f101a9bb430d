"""User code for the drain and health tests (importable by replica workers)."""

from __future__ import annotations

import asyncio
import threading
import time


class Work:
    """A 20 ms request that records how many ran (not idempotent: each run counts)."""

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.ran = 0

    async def __call__(self, x: int) -> int:
        self.ran += 1
        await asyncio.sleep(0.02)
        return x


class SyncWork:
    """A sync request of a given length and a sync check_health (both on worker threads)."""

    def __init__(self) -> None:
        self.health_checks = 0
        self.lock = threading.Lock()

    def __call__(self, seconds: float) -> str:
        time.sleep(seconds)
        return "finished"

    def check_health(self) -> None:
        with self.lock:
            self.health_checks += 1

    def checks(self) -> int:
        return self.health_checks

    def whoami(self) -> str:
        import ray

        return ray.get_runtime_context().get_actor_name()


class Mates:
    """One call cancels itself from inside (a nested call of its own was cancelled); one
    raises the model's own TimeoutError."""

    async def __call__(self, x):
        if x == "cancel me":
            raise asyncio.CancelledError()
        return x

    async def own_timeout(self):
        raise TimeoutError("the model's own timeout")
