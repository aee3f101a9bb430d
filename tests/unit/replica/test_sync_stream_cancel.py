"""Issue 22 #5: cancelling a sync-generator stream while a worker computes a chunk."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serveplane.replica.streaming import iterate


def _generator(entered: threading.Event, gate: threading.Event, log: list[str]):
    try:
        yield 0
        entered.set()
        assert gate.wait(10), "the test never released the worker"
        log.append("chunk 1 computed")
        yield 1
        log.append("chunk 2 computed")  # never: the stream was cancelled
        yield 2
    finally:
        log.append("closed")


def test_cancel_while_a_chunk_is_computed_closes_the_generator_after_that_chunk():
    entered, gate, log = threading.Event(), threading.Event(), []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            stream = iterate(_generator(entered, gate, log), lambda fn: loop.run_in_executor(pool, fn))
            assert await stream.__anext__() == 0
            step = asyncio.ensure_future(stream.__anext__())
            assert await loop.run_in_executor(None, entered.wait, 10)  # a worker is inside next()
            step.cancel()
            loop.call_soon(gate.set)  # the worker finishes its chunk after the cancel began
            with pytest.raises(asyncio.CancelledError):
                await step
            # closed deterministically, before the cancel returned: not left to the collector
            assert log == ["chunk 1 computed", "closed"]

    asyncio.run(main())


def test_a_step_queued_on_a_busy_pool_computes_nothing_after_cancel():
    log: list[str] = []
    blocker = threading.Event()

    def generator():
        try:
            yield 0
            log.append("chunk 1 computed")
            yield 1
        finally:
            log.append("closed")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            stream = iterate(generator(), lambda fn: loop.run_in_executor(pool, fn))
            assert await stream.__anext__() == 0
            pool.submit(blocker.wait, 10)  # the only worker is busy: the next step queues
            step = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0)
            step.cancel()
            loop.call_soon(blocker.set)
            with pytest.raises(asyncio.CancelledError):
                await step
            assert log == ["closed"]

    asyncio.run(main())
