"""``ResponseStream``: a request whose answer is a stream of chunks.

``handle.options(stream=True).remote(x)`` routes like any request (queue, slot, retries
off dead replicas before the first chunk) and makes one Ray streaming-generator call; the
replica sends each chunk as its generator yields it (``replica/streaming.py``).
``async for chunk in stream`` and ``for chunk in stream`` read them as they come. Ray
holds the producer back while ``STREAM_BUFFER`` chunks are unread, so a slow reader slows
the generator and memory stays bounded.

A replica that dies before the first chunk: the stream is retried like any request (same
``idempotent``/``max_retries`` rules). After it: the stream ends with ``ReplicaDiedError``.
``cancel()``, a cancelled reading task, or the deadline stop the replica's generator.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator, Iterator

from ray.exceptions import GetTimeoutError

from serveplane.replica.streaming import StreamHandoff, StreamStart, Whole
from serveplane.router import loop as loops
from serveplane.router.response import Response
from serveplane.router.state import RequestState
from serveplane.router.streamwire import stream_items


class _Chunked:
    """Iterating chunks that may arrive several to one Ray object (``next_batch``)."""

    __slots__ = ()
    _pending: collections.deque

    async def next_batch(self) -> list:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if not self._pending:
            self._pending.extend(await self.next_batch())
        return self._pending.popleft()

    async def batches(self) -> AsyncIterator[list]:
        """The chunks in the groups they travelled in (the HTTP proxy writes each group at once)."""
        if self._pending:
            pending = list(self._pending)
            self._pending.clear()
            yield pending
        while True:
            try:
                yield await self.next_batch()
            except StopAsyncIteration:
                return


class ResponseStream(_Chunked, Response):
    """Iterate it (``async for`` or ``for``); ``start`` holds the status and headers when
    the backend returned a starlette ``StreamingResponse``."""

    __slots__ = ("start", "whole", "_pending", "_seen")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["stream"] = True
        super().__init__(*args, **kwargs)
        self.start: StreamStart | None = None
        self.whole = False  # the method returned one value (its only chunk), not a stream
        self._pending: collections.deque = collections.deque()  # chunks that came together
        self._seen: list | None = None  # a shadowed stream's chunks, compared whole at its end

    # -- async ------------------------------------------------------------------------------
    async def next_batch(self) -> list:
        """The next chunks that arrived together (at least one); ``StopAsyncIteration`` at the end."""
        router, request = self.router, self._request
        while True:
            if request.state is RequestState.DONE:
                raise StopAsyncIteration
            gen = request.ref
            if gen is None:
                await self.routed()  # the queue enforces the deadline while it waits
                continue
            if request.state.final:
                raise self._ended()
            try:
                if request.deadline is None:
                    chunk = await router.transport.next_chunk(gen)
                else:
                    with loops.Deadline(request.deadline - router.clock.monotonic()):
                        chunk = await router.transport.next_chunk(gen)
            except loops.DeadlinePassed:
                raise self._timed_out() from None
            except StopAsyncIteration:
                if request.state.final and request.state is not RequestState.DONE:
                    raise self._ended() from None
                self._ended_whole()
                raise
            except asyncio.CancelledError:
                self._caller_cancelled()
                raise
            except Exception as exc:  # noqa: BLE001 - classified by the router
                self._fail(exc, gen)
                continue
            items = self._items(chunk)
            if items:
                return items

    # -- sync -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pending:
            return self._pending.popleft()
        router, request = self.router, self._request
        while True:
            if request.state is RequestState.DONE:
                raise StopIteration
            remaining = None if request.deadline is None else max(0.0, request.deadline - router.clock.monotonic())
            gen = request.ref
            if gen is None or request.state.final:
                if request.state.final:
                    raise self._ended()
                self._wait_routed_sync(remaining)
                continue
            try:
                chunk = router.transport.next_chunk_sync(gen, remaining)
            except StopIteration:
                if request.state.final and request.state is not RequestState.DONE:
                    raise self._ended() from None
                self._ended_whole()
                raise
            except GetTimeoutError:
                raise self._timed_out() from None
            except Exception as exc:  # noqa: BLE001 - classified by the router
                self._fail(exc, gen)
                continue
            items = self._items(chunk)
            if items:
                self._pending.extend(items[1:])
                return items[0]

    # -- shared -----------------------------------------------------------------------------
    def _fail(self, exc: Exception, gen: Any) -> None:
        """Raise the caller's error, or return when the stream was sent again elsewhere."""
        error = self._settle(exc, gen)
        if error is None:
            return  # retried before its first chunk
        raise error from (None if error is exc else exc)

    def _items(self, chunk: Any) -> list:
        request = self._request
        self.router.streaming(request)
        if isinstance(chunk, StreamStart):
            self.start = chunk
        elif isinstance(chunk, Whole):  # the method returned one value, not a stream
            self.whole = True
        items = stream_items(chunk)
        if request.shadows:
            if self._seen is None:
                self._seen = []
            self._seen.extend(items)
        return items

    def _ended_whole(self) -> None:
        """The stream ended: its answer, compared with its shadows' (if any)."""
        request = self._request
        self.router.finish(request)
        if request.shadows:
            seen, self._seen = self._seen or [], None
            self.router.report_to_shadows(request, seen)

    def result(self, timeout: float | None = None) -> Any:
        raise TypeError("a ResponseStream has no single result: iterate it (for / async for)")

    def __await__(self) -> Any:
        raise TypeError("a ResponseStream cannot be awaited: iterate it with 'async for'")

    def __repr__(self) -> str:
        request = self._request
        return f"<ResponseStream {self.router.endpoint}.{request.method_name} ({request.state.value}, " \
               f"{request.chunks} chunks)>"


class HandoffStream(_Chunked):
    """The body of a ``StreamingResponse`` a replica answered to an ordinary HTTP call
    (``StreamHandoff``): pulled from that replica with one streaming call."""

    def __init__(self, response: Response, handoff: StreamHandoff) -> None:
        self.start = handoff.start
        self._router = response.router
        replica = response.request.replica
        if replica is None:
            raise RuntimeError(f"{response!r} has no replica to pull its stream from")
        self._gen = self._router.transport.pull_stream(replica, handoff.stream_id)
        self._pending: collections.deque = collections.deque()

    async def next_batch(self) -> list:
        try:
            chunk = await self._router.transport.next_chunk(self._gen)
        except asyncio.CancelledError:
            self.cancel()
            raise
        return stream_items(chunk)

    def cancel(self) -> None:
        self._router.transport.cancel(self._gen)

