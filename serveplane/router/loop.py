"""Event loops of the data path.

Async callers route on their own loop. Sync callers (the driver, sync Ray tasks) route at
once on their own thread when a replica is free; only a request that must wait (queued,
retried) runs on the one background loop this process keeps for them.

A request that waits has a "waiter": an ``asyncio.Task`` on the loop that routes it, or a
``concurrent.futures.Future``. ``wait_sync`` and ``wait_async`` wait for either kind from
any thread or loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine

from serveplane.deadline import Deadline, DeadlinePassed  # noqa: F401 - loops.Deadline in the router

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's loop for sync callers' waiting requests (started on first use)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="serveplane-router-loop",
                             daemon=True).start()
            _loop = loop
        return _loop


def use_background_loop(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop | None:
    """Make ``loop`` the background loop (the data-plane simulator runs every router on its
    one virtual-time loop); returns the previous one, to be put back."""
    global _loop
    with _lock:
        previous, _loop = _loop, loop
        return previous


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def start(coro: Coroutine[Any, Any, Any], name: str) -> Any:
    """Run ``coro`` on the caller's loop if it has one, else on the background loop."""
    loop = running_loop()
    if loop is not None:
        return loop.create_task(coro, name=name)
    return asyncio.run_coroutine_threadsafe(coro, background_loop())


def copy_outcome(source: Any, target: concurrent.futures.Future) -> None:
    """Give ``target`` the outcome of the finished ``source`` (either kind of future)."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


def _as_concurrent(waiter: Any) -> concurrent.futures.Future:
    """A thread-safe view of an ``asyncio.Task`` that lives on another thread's loop."""
    if isinstance(waiter, concurrent.futures.Future):
        return waiter
    view: concurrent.futures.Future = concurrent.futures.Future()
    waiter.get_loop().call_soon_threadsafe(
        waiter.add_done_callback, lambda task: copy_outcome(task, view))
    return view


def wait_sync(waiter: Any, timeout: float | None) -> None:
    """Block until ``waiter`` is done; raises its error, or ``TimeoutError``."""
    if isinstance(waiter, asyncio.Future) and waiter.get_loop() is running_loop():
        raise RuntimeError("this response is being routed on the running event loop; blocking on "
                           "it would deadlock: use 'await response' instead of .result()")
    try:
        _as_concurrent(waiter).result(timeout)
    except concurrent.futures.CancelledError:
        raise asyncio.CancelledError() from None
    except concurrent.futures.TimeoutError:
        if not waiter.done():
            raise TimeoutError(f"still waiting after {timeout}s") from None
        raise


async def wait_async(waiter: Any) -> None:
    loop = asyncio.get_running_loop()
    if isinstance(waiter, asyncio.Future) and waiter.get_loop() is loop:
        await asyncio.shield(waiter)  # a cancelled awaiter never cancels the routing itself
    elif isinstance(waiter, concurrent.futures.Future):
        if waiter.done():
            waiter.result()  # raises its error; no wake-up through the loop needed
            return
        # many requests may wait on one future (a router-side batch): one view per loop,
        # so the future wakes each loop once, not each awaiter
        views = waiter.__dict__.setdefault("_serveplane_views", {})
        view = views.get(loop)
        if view is None:
            view = views[loop] = asyncio.wrap_future(waiter, loop=loop)
        await asyncio.shield(view)
    else:
        await asyncio.wrap_future(_as_concurrent(waiter))
