from __future__ import annotations

import asyncio

import serveplane


class BatchedModel:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.broken = False

    @serveplane.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def __call__(self, items):
        self.sizes.append(len(items))
        if self.broken:
            self.broken = False
            return items[:-1]
        await asyncio.sleep(0.01)
        return [{"y": i * 10, "batch": len(items)} for i in items]

    def break_next(self):
        self.broken = True

    def seen(self):
        return self.sizes


class ClassicBatched:
    @serveplane.accept_batch
    def __call__(self, items):
        return [{"y": i + 1, "batch": len(items)} for i in items]


class PlainModel:
    def __call__(self, x):
        return x * 3
