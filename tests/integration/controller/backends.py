"""User code for the controller tests (importable by replica workers)."""

from __future__ import annotations

import asyncio
import os
import time

import ray

from serveplane import accept_batch


class Counter:
    def __init__(self, prefix: str = "v1") -> None:
        self.prefix = prefix
        self.threshold = None
        self.pid = os.getpid()

    def reconfigure(self, user_config):
        self.threshold = user_config.get("threshold")

    def __call__(self, x):
        return f"{self.prefix}:{x}"

    def info(self):
        return {"pid": self.pid, "threshold": self.threshold, "prefix": self.prefix,
                "gpus": ray.get_runtime_context().get_accelerator_ids().get("GPU", [])}


class Slow:
    async def __call__(self, seconds):
        await asyncio.sleep(seconds)
        return "done"

    def info(self):
        return {"pid": os.getpid()}


class Broken:
    def __init__(self):
        raise ValueError("weights file '/models/missing.pt' not found")


def echo(x):
    return x


def sleepy(x):
    time.sleep(0.01)
    return x


class AsyncConfigured:
    """An async reconfigure plus an initial user_config: every start used to fail."""

    def __init__(self) -> None:
        self.config = None

    async def reconfigure(self, user_config):
        await asyncio.sleep(0)
        self.config = user_config

    def __call__(self, x):
        return {"config": self.config, "x": x}


class BatchSizes:
    """Records the size of every batch it is given (replica-side @accept_batch)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @accept_batch
    def __call__(self, items):
        time.sleep(0.05)  # long enough for concurrent callers to gather
        self.sizes.append(len(items))
        return items

    def seen(self):
        return self.sizes
