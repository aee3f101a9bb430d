from __future__ import annotations

import asyncio
import time

import ray


class Sick:
    """Healthy until told otherwise; then check_health raises or hangs."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.name = ray.get_runtime_context().get_actor_name()

    def set_mode(self, mode):
        self.mode = mode
        return self.name

    def whoami(self):
        return self.name

    def fail(self):
        raise ValueError("application error, not a health problem")

    async def check_health(self):
        if self.mode == "raise":
            raise RuntimeError("gpu memory corrupted")
        if self.mode == "hang":
            await asyncio.sleep(60)


class Busy:
    async def __call__(self, seconds=0.3):
        await asyncio.sleep(seconds)
        return "ok"


def quick(x=None):
    time.sleep(0.01)
    return "ok"
