"""User code for the data-path tests (importable by replica workers)."""

from __future__ import annotations

import asyncio
import os
import time

import ray

from serveplane.context import current_session_id


class Echo:
    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag
        self.name = ray.get_runtime_context().get_actor_name()

    def __call__(self, x):
        return {"tag": self.tag, "x": x, "replica": self.name}

    def predict(self, x):
        return {"predict": x * 2, "replica": self.name}

    def double(self, x):
        return x * 2

    def add(self, x, y=0):
        return x + y

    def whoami(self):
        return self.name

    def fail(self, x):
        raise ValueError(f"bad input {x!r}")

    def ping(self, fail_substring: str = ""):
        if fail_substring and fail_substring in self.name:
            raise RuntimeError(f"{self.name} refuses")
        return self.name


class SlowEcho:
    def __init__(self, delay: float = 0.5) -> None:
        self.delay = delay
        self.name = ray.get_runtime_context().get_actor_name()

    async def __call__(self, x):
        await asyncio.sleep(self.delay)
        return x

    async def double(self, x):
        await asyncio.sleep(self.delay)
        return x * 2

    async def whoami(self):
        return self.name


class Flaky:
    """Raises on replicas whose name contains the given text, answers on the others."""

    def __init__(self) -> None:
        self.name = ray.get_runtime_context().get_actor_name()

    def ping(self, fail_substring: str):
        if fail_substring and fail_substring in self.name:
            raise RuntimeError(f"{self.name} refuses")
        return self.name


class Doubler:
    async def __call__(self, x):
        return x * 2


class Adder:
    def __call__(self, x, y=0):
        return x + y


class SessionProbe:
    """Reports the session a request arrived with, from the replica's context."""

    def __init__(self) -> None:
        self.name = ray.get_runtime_context().get_actor_name()

    def __call__(self, _x=None):
        return {"session": current_session_id.get(), "replica": self.name, "pid": os.getpid()}


def sleepy(seconds):
    time.sleep(seconds)
    return seconds
