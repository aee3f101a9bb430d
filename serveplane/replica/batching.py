"""Batching inside a replica: ``@serveplane.batch`` and ``@serveplane.accept_batch``.

Concurrent calls of a batched method are gathered into one list call; each caller gets its
own element. Invariants:
- a batch never holds more than ``max_batch_size`` items;
- a batch function that raises, or returns a list of the wrong length, fails every caller
  of *that* batch with a clear error; the next batch is unaffected;
- a caller cancelled while waiting is dropped from its batch (or its result discarded);
  the other callers still get theirs;
- what a batcher observes lives in fixed memory (``BatchSizeHistogram``), however many
  batches it ran.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any, Awaitable, Callable

from serveplane import tracing
from serveplane.exceptions import BatchSizeMismatchError, InvalidConfigError, RequestCancelledError

logger = logging.getLogger(__name__)


def _check_sizes(max_batch_size: Any, batch_wait_timeout_s: Any) -> None:
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise InvalidConfigError(f"max_batch_size is {max_batch_size!r}; it must be an integer >= 1")
    if isinstance(batch_wait_timeout_s, bool) or not isinstance(batch_wait_timeout_s, (int, float)) \
            or batch_wait_timeout_s < 0:
        raise InvalidConfigError(
            f"batch_wait_timeout_s is {batch_wait_timeout_s!r}; it must be a number >= 0")


def check_batch_result(name: str, results: Any, n_items: int) -> list[Any]:
    """One result per input, or ``BatchSizeMismatchError`` naming the method and both lengths."""
    if not isinstance(results, (list, tuple)) or len(results) != n_items:
        got = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
        raise BatchSizeMismatchError(
            f"batch method {name!r} returned {got} results for a batch of {n_items}; it must "
            "return a list with one result per input")
    return list(results)


# Buckets of the batch-size histogram: 1, 2-3, 4-7, ... and the last one for the rest.
BATCH_SIZE_BUCKETS = 12


class BatchSizeHistogram:
    """The sizes of the batches a batcher ran: counts in power-of-two buckets, a fixed
    size whatever the number of batches (the replica does not import the router's)."""

    __slots__ = ("count", "items", "largest", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.items = 0
        self.largest = 0
        self.buckets = [0] * BATCH_SIZE_BUCKETS

    def add(self, size: int) -> None:
        self.count += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.buckets[min(max(size, 1).bit_length() - 1, BATCH_SIZE_BUCKETS - 1)] += 1

    def as_dict(self) -> dict[str, Any]:
        histogram = {}
        for i, n in enumerate(self.buckets):
            if n:
                low, high = 2 ** i, 2 ** (i + 1) - 1
                last = i == BATCH_SIZE_BUCKETS - 1
                histogram[f"{low}+" if last else str(low) if low == high else f"{low}-{high}"] = n
        return {"batches": self.count, "max_batch_size_seen": self.largest,
                "avg_batch_size": self.items / self.count if self.count else 0.0,
                "batch_sizes": histogram}


class Batcher:
    """Gathers single calls into list calls of ``fn`` on the running event loop."""

    def __init__(self, fn: Callable[[list[Any]], Awaitable[list[Any]]], name: str,
                 max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self._fn = fn
        self.name = name
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self.batch_sizes = BatchSizeHistogram()  # observed, for tests and metrics
        self._traces: dict[int, Any] = {}  # id(caller's future) -> its tracing context

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done() \
                or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(
                self._run(), name=f"serveplane-batcher-{self.name}")
            self._task.add_done_callback(self._on_done)
        return self._queue

    def _on_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("batcher %s crashed: %r", self.name, task.exception())

    async def submit(self, item: Any) -> Any:
        queue = self._ensure_started()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if tracing.ENABLED:
            self._traces[id(fut)] = tracing.capture()
        try:
            await queue.put((item, fut))
            return await fut
        finally:
            if tracing.ENABLED:
                self._traces.pop(id(fut), None)

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[Any, asyncio.Future]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_timeout_s
        while len(batch) < self.max_batch_size:
            while not queue.empty() and len(batch) < self.max_batch_size:
                batch.append(queue.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= self.max_batch_size or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), timeout=remaining))
            except asyncio.TimeoutError:
                break
        return [(item, fut) for item, fut in batch if not fut.done()]  # drop cancelled callers

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = await self._collect(queue)
            if not batch:
                continue
            self.batch_sizes.add(len(batch))
            items = [item for item, _ in batch]
            traced = [self._traces.get(id(fut)) for _, fut in batch] if tracing.ENABLED else ()
            try:
                with tracing.batch_span(self.name, traced) if tracing.ENABLED else tracing.NO_SPAN:
                    results = check_batch_result(self.name, await self._fn(items), len(items))
            except asyncio.CancelledError:
                self._fail(batch, RequestCancelledError(
                    f"batch method {self.name!r} was cancelled while running a batch of "
                    f"{len(batch)}; its requests did not complete"))
                cancelling = getattr(asyncio.current_task(), "cancelling", None)
                if cancelling is None or cancelling():
                    # the batcher itself is being cancelled (its loop is closing), or this
                    # Python cannot tell (3.10): stop; the next submit starts a new task
                    raise
                continue  # cancelled from inside the batch function: the next batch runs
            except Exception as exc:  # noqa: BLE001 - every caller of this batch gets it
                self._fail(batch, exc)
                continue
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    @staticmethod
    def _fail(batch: list[tuple[Any, asyncio.Future]], error: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(error)

    async def run_gathered(self, items: list[Any]) -> list[tuple[bool, Any]]:
        """Run items that arrived already gathered (router-side batch), in chunks."""
        out: list[tuple[bool, Any]] = []
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start:start + self.max_batch_size]
            self.batch_sizes.add(len(chunk))
            try:
                results = check_batch_result(self.name, await self._fn(chunk), len(chunk))
                out.extend((True, r) for r in results)
            except asyncio.CancelledError:
                cancelling = getattr(asyncio.current_task(), "cancelling", None)
                if cancelling is None or cancelling():
                    raise  # the whole call is cancelled
                error = RequestCancelledError(
                    f"batch method {self.name!r} was cancelled inside its user code while "
                    f"running a batch of {len(chunk)}; the next batch runs")
                out.extend((False, error) for _ in chunk)
            except Exception as exc:  # noqa: BLE001 - returned to each caller
                out.extend((False, exc) for _ in chunk)
        return out


def _single_item(args: tuple, kwargs: dict, name: str) -> Any:
    if kwargs or len(args) != 1:
        raise TypeError(f"batched method {name!r} takes exactly one positional argument per call")
    return args[0]


def batch(_fn: Callable | None = None, *, max_batch_size: int = 10,
          batch_wait_timeout_s: float = 0.0) -> Any:
    """Gather concurrent calls of an async method (or function) into one list call.

    ``@serveplane.batch(max_batch_size=8, batch_wait_timeout_s=0.01)`` on
    ``async def __call__(self, items: list) -> list``; each caller passes one item.
    """
    _check_sizes(max_batch_size, batch_wait_timeout_s)

    def wrap(fn: Callable) -> Callable:
        if not inspect.iscoroutinefunction(fn):
            raise InvalidConfigError(f"@serveplane.batch needs an async function; {fn.__qualname__} is not")
        params = list(inspect.signature(fn).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"__serveplane_batcher_{fn.__name__}"

        def batcher_for(owner: Any) -> Batcher:
            found = getattr(owner, attr, None) if is_method else getattr(wrapper, "_batcher", None)
            if found is None:
                call = functools.partial(fn, owner) if is_method else fn
                found = Batcher(call, fn.__qualname__, max_batch_size, batch_wait_timeout_s)
                if is_method:
                    setattr(owner, attr, found)
                else:
                    wrapper._batcher = found  # type: ignore[attr-defined]
            return found

        if is_method:
            @functools.wraps(fn)
            async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                return await batcher_for(self).submit(_single_item(args, kwargs, fn.__qualname__))
        else:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                return await batcher_for(None).submit(_single_item(args, kwargs, fn.__qualname__))

        wrapper._serveplane_batch = _GatheredEntry(batcher_for)  # type: ignore[attr-defined]
        return wrapper

    return wrap(_fn) if _fn is not None else wrap


class _GatheredEntry:
    """Lets the replica run a router-side batch straight through a @batch method."""

    def __init__(self, batcher_for: Callable[[Any], Batcher]) -> None:
        self._batcher_for = batcher_for

    async def run_gathered(self, owner: Any, calls: list[tuple[tuple, dict]]) -> list[tuple[bool, Any]]:
        batcher = self._batcher_for(owner)
        items = []
        for args, kwargs in calls:
            items.append(_single_item(args, kwargs, batcher.name))
        return await batcher.run_gathered(items)

    def batcher(self, owner: Any) -> Batcher:
        return self._batcher_for(owner)


def accept_batch(fn: Callable) -> Callable:
    """Classic marker: the method takes a list and returns a list; the replica gathers calls
    according to ``BackendConfig(max_batch_size=..., batch_wait_timeout=...)``."""
    fn._serveplane_accept_batch = True  # type: ignore[attr-defined]
    return fn
