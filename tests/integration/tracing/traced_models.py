"""Backends of the traced scenario (importable by replica workers)."""

from __future__ import annotations

import asyncio

import serveplane


class Outer:
    """Calls ``inner`` twice, concurrently: two nested handle calls, batched over there."""

    def __init__(self) -> None:
        self.inner = None

    async def __call__(self, request):
        if self.inner is None:
            self.inner = serveplane.connect().get_handle("inner")
        doubled = await asyncio.gather(self.inner.remote(1), self.inner.remote(2))
        return {"doubled": list(doubled)}


class Inner:
    @serveplane.batch(max_batch_size=4, batch_wait_timeout_s=0.2)
    async def __call__(self, items):
        return [2 * x for x in items]


def shadow(request):
    return "shadowed"
