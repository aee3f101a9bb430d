"""User code for the streaming, cancellation, deadline and admission tests (importable by
replica workers). Counters live in the replica process: tests read them with a call."""

from __future__ import annotations

import asyncio
import threading
import time

import serveplane



class Streamer:
    """Generators (async and sync), a slow call that counts its cancellations, and the
    request context."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = 0
        self.running = 0
        self.max_running = 0
        self.produced = 0
        self.lock = threading.Lock()

    async def tokens(self, n: int, gap_s: float = 0.2):
        for i in range(n):
            if i:
                await asyncio.sleep(gap_s)
            yield f"tok{i} "

    async def late_tokens(self, delay_s: float):
        await asyncio.sleep(delay_s)
        for i in range(3):
            yield i

    def sync_tokens(self, n: int, gap_s: float = 0.2):
        for i in range(n):
            if i:
                time.sleep(gap_s)
            yield i

    async def endless(self, gap_s: float = 0.01):
        """Counts what it produced; counts its cancellation (CancelledError in user code)."""
        try:
            i = 0
            while True:
                self.produced += 1
                yield f"{i}\n"
                i += 1
                await asyncio.sleep(gap_s)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def slow(self, seconds: float):
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(seconds)
            return "finished"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def remaining(self):
        context = serveplane.get_request_context()
        return None if context is None else context.remaining_s()

    async def counters(self):
        return {"cancelled": self.cancelled, "started": self.started, "max_running": self.max_running,
                "produced": self.produced}

    async def one_value(self, x):
        return {"x": x}

    @serveplane.http_method
    async def sse(self, request):
        from starlette.responses import StreamingResponse

        n = int(request.query_params.get("n", "3"))

        async def events():
            for i in range(n):
                if i:
                    await asyncio.sleep(0.2)
                yield f"event: tick\ndata: {i}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @serveplane.http_method
    async def slow_http(self, request):
        return await self.slow(float(request.query_params.get("s", "30")))

    @serveplane.http_method
    async def endless_http(self, request):
        async for chunk in self.endless(0.01):
            yield chunk

    async def __call__(self, request):
        """Over HTTP: a generator of the body's words, slowly."""
        for word in request.body.decode().split():
            await asyncio.sleep(0.2)
            yield word


class Nested:
    """Calls another endpoint while running (deadline inheritance, nested cancellation)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def remaining_inside(self):
        from serveplane.router import get_handle
        from serveplane.records import CONTROLLER_NAME

        context = serveplane.get_request_context()
        outer = context.remaining_s()
        handle = get_handle(self.endpoint, CONTROLLER_NAME, context_namespace())
        inner = await handle.options(method_name="remaining").remote()
        return {"outer": outer, "inner": inner}

    async def slow_inside(self, seconds: float):
        from serveplane.router import get_handle
        from serveplane.records import CONTROLLER_NAME

        handle = get_handle(self.endpoint, CONTROLLER_NAME, context_namespace())
        return await handle.options(method_name="slow").remote(seconds)


def context_namespace() -> str:
    from serveplane.context import get_replica_context

    return get_replica_context().namespace




class Meeting:
    """User code for the tests of features that meet (streams, queues, shadows, batches)."""

    def __init__(self) -> None:
        self.stopped = 0

    async def tokens(self, n: int, gap_s: float = 0.05):
        for i in range(n):
            if i:
                await asyncio.sleep(gap_s)
            yield f"tok{i}"

    async def endless(self, gap_s: float = 0.01):
        try:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(gap_s)
        except (asyncio.CancelledError, GeneratorExit):
            self.stopped += 1
            raise

    async def echo(self, x, delay_s: float = 0.0):
        if delay_s:
            await asyncio.sleep(delay_s)
        return {"x": x}

    async def fail(self, message: str):
        raise LookupError(message)

    async def stopped_streams(self):
        return self.stopped
