"""Streams between a replica and its callers: what crosses the Ray boundary.

A stream is one Ray streaming-generator call (``handle_stream``): each chunk the user's
generator yields is one object, sent as soon as it is produced; Ray holds back the
producer once ``STREAM_BUFFER`` chunks are unread (back-pressure). Items are the user's
chunks, except:

- ``StreamStart`` first, when the method returned a starlette ``StreamingResponse``: its
  status, headers and media type; its body's chunks follow;
- ``Whole`` alone, when the method returned an ordinary value (a stream asked of a
  method that does not stream: the caller gets that value as the stream's one chunk);
- ``Chunks``: several chunks in one object. A chunk leaves as soon as it is produced, but
  chunks produced while the previous object was on its way travel together
  (``coalesce``), so a fast generator pays Ray's per-object cost once per batch, not per
  chunk; a slow one still sends every chunk at once.

A starlette ``StreamingResponse`` returned to an ordinary (non-stream) call from the HTTP
proxy cannot cross Ray (its body is an async generator): the replica keeps the body and
answers ``StreamHandoff``; the proxy then pulls the body with one ``pull_stream`` call and
from then on sends that method's requests as streams (one call each). A kept body is in
flight for the replica until pulled to its end (admission, drain, the request's deadline);
one never pulled is closed after ``HANDOFF_TTL_S``.

Closing a stream closes every generator under it at once, the user's too; a sync
generator is closed after the ``next()`` a worker runs in it returns.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, AsyncIterator, Callable

# Unread objects a producer may run ahead of its consumer (Ray's generator back-pressure).
STREAM_BUFFER = 4
# One object carries at most this many chunks, and at most about this many bytes of them;
# at most COALESCE_MAX chunks wait in the replica for the next object. A stream whose reader
# stops holds at most (STREAM_BUFFER + 1) objects and COALESCE_MAX chunks in flight.
COALESCE_MAX = 256
COALESCE_BYTES = 64 * 1024
# A handed-off body nobody pulls is closed after this long (the proxy pulls at once).
HANDOFF_TTL_S = 30.0


@dataclass(frozen=True)
class StreamStart:
    status_code: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    media_type: str | None = None


@dataclass(frozen=True)
class Whole:
    value: Any


@dataclass(frozen=True)
class StreamHandoff:
    stream_id: str
    start: StreamStart


@dataclass(frozen=True)
class Chunks:
    items: list


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


async def coalesce(chunks: AsyncIterator[Any], limit: int = COALESCE_MAX) -> AsyncGenerator[Any, None]:
    """The chunks of ``chunks``, each one as soon as it is ready, except that the chunks
    ready by the time the previous one was taken go together as one ``Chunks``.

    The producer runs in a task of its own (with this request's context) and at most
    ``limit`` chunks ahead; closing or cancelling this generator cancels it, so user code
    gets ``CancelledError`` where it waits."""
    # the first chunk is read here, with no task hop: the time to the first chunk is the
    # generator's own; the producer task takes over from the second
    chunks = chunks.__aiter__()
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        return
    yield first
    queue: asyncio.Queue = asyncio.Queue(maxsize=limit)

    async def produce() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
            await queue.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - raised to the consumer in order
            await queue.put(_Raised(exc))

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            batch = [await queue.get()]
            size = _size(batch[0])
            while len(batch) < limit and size < COALESCE_BYTES and not queue.empty():
                batch.append(queue.get_nowait())
                size += _size(batch[-1])
            last = batch[-1]
            ended = last is _END or isinstance(last, _Raised)
            ready = batch[:-1] if ended else batch
            if len(ready) == 1:
                yield ready[0]
            elif ready:
                yield Chunks(ready)
            if isinstance(last, _Raised):
                raise last.error
            if ended:
                return
    finally:
        if not producer.done():
            producer.cancel()
            try:
                await producer
            except BaseException:  # noqa: BLE001 - its CancelledError, or what cleanup raised
                pass
        # the producer may have stopped between two chunks: close the source now (its
        # user code's cleanup runs here, not when the collector finds it)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _size(chunk: Any) -> int:
    return len(chunk) if isinstance(chunk, (str, bytes, bytearray)) else 64


def is_streaming_response(result: Any) -> bool:
    return hasattr(result, "body_iterator") and hasattr(result, "status_code")


def stream_start(result: Any) -> StreamStart:
    return StreamStart(result.status_code, list(result.raw_headers), getattr(result, "media_type", None))


def streams(method: Callable[..., Any]) -> bool:
    """Is ``method`` a generator (sync or async): does calling it produce a stream?"""
    if inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method):
        return True
    call = getattr(method, "__call__", None)
    return call is not None and not inspect.isfunction(method) and not inspect.ismethod(method) and (
        inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call))


async def iterate(produced: Any, run_sync: Callable[[Callable[[], Any]], Any]) -> AsyncGenerator[Any, None]:
    """The chunks of an async or sync generator; a sync one advances in ``run_sync`` (a
    worker thread) so a slow chunk never stalls the replica's loop.

    Closing or cancelling this iterator closes the user's generator (its ``finally`` runs)
    before this iterator's own close returns. A sync generator cannot be closed while a
    worker is inside its ``next()`` (``ValueError: generator already executing``): the
    close then waits for that chunk to be computed, and closes after it."""
    if inspect.isasyncgen(produced):
        try:
            async for chunk in produced:
                yield chunk
        finally:
            await produced.aclose()  # the user's cleanup runs (GeneratorExit) when cancelled
        return
    done = object()
    closing = [False]

    def step() -> Any:
        # a step the pool starts only after the close began computes nothing more
        return done if closing[0] else next(produced, done)

    pending: Any = None
    try:
        while True:
            # shielded: a cancelled await leaves the worker's step running to its end, so
            # the close below knows when the generator is free
            pending = asyncio.ensure_future(run_sync(step))
            chunk = await asyncio.shield(pending)
            pending = None
            if chunk is done:
                return
            yield chunk
    finally:
        closing[0] = True
        await _close_after(produced, pending)


async def _close_after(produced: Any, pending: Any) -> None:
    """Close a sync generator once the step a worker runs in it (``pending``) ended."""
    if pending is not None and not pending.done():
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            # cancelled again while waiting: close it when the worker returns, no later
            pending.add_done_callback(lambda _: _close_quietly(produced))
            raise
        except BaseException:  # noqa: BLE001 - that chunk's error: nobody reads it now
            pass
    _close_quietly(produced)


def _close_quietly(produced: Any) -> None:
    try:
        produced.close()
    except ValueError:  # still executing: only possible if a worker runs it again
        pass


class Handoffs:
    """Bodies of ``StreamingResponse`` s answered to ordinary calls, from the answer until
    they were pulled to their end, or closed unpulled after ``ttl_s``.

    Each kept body is in flight for the replica (``on_end`` is called once when it ends):
    it counts against admission and the drain waits for it. ``keep`` and ``take`` run on
    the replica's event loop."""

    def __init__(self, on_end: Callable[[], None], ttl_s: float = HANDOFF_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._on_end = on_end
        self._bodies: dict[str, tuple[Any, Any, asyncio.TimerHandle]] = {}

    def keep(self, body: Any, meta: Any) -> str:
        stream_id = uuid.uuid4().hex
        timer = asyncio.get_running_loop().call_later(self._ttl_s, self._expire, stream_id)
        self._bodies[stream_id] = (body, meta, timer)
        return stream_id

    def take(self, stream_id: str) -> tuple[Any, Any]:
        """The body and its request's metadata; the caller calls ``ended()`` when done."""
        kept = self._bodies.pop(stream_id, None)
        if kept is None:
            raise LookupError(f"stream {stream_id!r} is unknown here or expired "
                              f"(a handed-off body is kept {self._ttl_s:g}s)")
        body, meta, timer = kept
        timer.cancel()
        return body, meta

    def ended(self) -> None:
        self._on_end()

    def _expire(self, stream_id: str) -> None:
        kept = self._bodies.pop(stream_id, None)
        if kept is None:
            return
        task = asyncio.ensure_future(_aclose(kept[0]))
        task.add_done_callback(lambda _: self._on_end())

    def __len__(self) -> int:
        return len(self._bodies)


async def _aclose(body: Any) -> None:
    close = getattr(body, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001 - an unpulled body's cleanup: nobody to tell
            pass
