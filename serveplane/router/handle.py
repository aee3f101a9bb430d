"""``Handle`` and ``Response``: what callers hold.

``handle.remote(x)`` routes at once when a replica is free (one actor call, no thread hop,
no task), and otherwise queues: on the caller's own loop for async callers, on one
background loop per process for sync callers. A ``Response`` is awaitable, has
``.result(timeout)``, gives its ``ObjectRef`` for Ray tasks, and can be passed as an
argument to another handle call (the replica receives the value; the caller never
fetches it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Coroutine, Iterator

import ray

from serveplane.context import current_session_id
from serveplane.exceptions import RequestTimeoutError, ServeplaneError
from serveplane.records import ReplicaInfo
from serveplane.router.router import DEAD_ERRORS, EndpointRouter

DEFAULT_TIMEOUT_S = 60.0

_bg_loop: asyncio.AbstractEventLoop | None = None
_bg_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """One event loop thread per process, for sync callers' queued requests and retries."""
    global _bg_loop
    with _bg_lock:
        if _bg_loop is None or _bg_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="serveplane-router-loop", daemon=True).start()
            _bg_loop = loop
        return _bg_loop


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class QuorumError(ServeplaneError):
    """Fewer replicas answered a fanout than its quorum."""


class Response:
    __slots__ = ("router", "args", "kwargs", "method_name", "session_id", "shard_key", "timeout_s",
                 "request_id", "backend", "replica", "ref", "attempts", "queued_under", "shadows",
                 "batch_index", "_waiting", "_released", "__weakref__")

    def __init__(self, router: EndpointRouter, args: tuple, kwargs: dict, method_name: str,
                 session_id: str | None, shard_key: str | None, timeout_s: float) -> None:
        self.router = router
        self.args = args
        self.kwargs = kwargs
        self.method_name = method_name
        self.session_id = session_id
        self.shard_key = shard_key
        self.timeout_s = timeout_s
        self.request_id = uuid.uuid4().hex
        self.backend: str | None = None
        self.replica: ReplicaInfo | None = None
        self.ref: Any = None
        self.attempts = 0
        self.queued_under: str | None = None
        self.shadows: list[Any] = []
        self.batch_index: int | None = None  # position in a router-side batch
        self._waiting: Any = None  # asyncio.Task or concurrent Future while queued
        self._released = False

    # -- routing -----------------------------------------------------------------------
    def start_waiting(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = _running_loop()
        if loop is not None:
            self._waiting = loop.create_task(coro, name=f"serveplane-route-{self.request_id[:8]}")
        else:
            self._waiting = asyncio.run_coroutine_threadsafe(coro, background_loop())

    def resolved_args(self) -> tuple[tuple, dict]:
        """Responses passed as arguments become their ObjectRefs (Ray resolves them)."""
        if not any(isinstance(a, Response) for a in self.args) and not any(
                isinstance(v, Response) for v in self.kwargs.values()):
            return self.args, self.kwargs
        args = tuple(a.object_ref() if isinstance(a, Response) else a for a in self.args)
        kwargs = {k: (v.object_ref() if isinstance(v, Response) else v) for k, v in self.kwargs.items()}
        return args, kwargs

    def _wait_routed_sync(self, timeout: float | None) -> None:
        while self.ref is None:
            waiting = self._waiting
            if waiting is None:  # a retry after a replica died
                waiting = self._waiting = asyncio.run_coroutine_threadsafe(
                    self.router._route_queued(self, reserved=False), background_loop())
            if isinstance(waiting, asyncio.Task):
                raise RuntimeError("this Response is being routed on an event loop; await it there")
            try:
                waiting.result(timeout)
            except concurrent.futures.TimeoutError:
                raise RequestTimeoutError(f"request to endpoint {self.router.endpoint!r} was still "
                                          f"queued after {timeout}s") from None
            finally:
                if waiting.done() and self._waiting is waiting:
                    self._waiting = None

    async def _wait_routed_async(self) -> None:
        while self.ref is None:
            waiting = self._waiting
            if waiting is None:
                waiting = self._waiting = asyncio.ensure_future(
                    self.router._route_queued(self, reserved=False))
            try:
                if isinstance(waiting, asyncio.Task):
                    if waiting.get_loop() is not asyncio.get_running_loop():
                        raise RuntimeError("this Response is being routed on another event loop; "
                                           "await it there")
                    await waiting
                else:
                    await asyncio.wrap_future(waiting)
            finally:
                if waiting.done() and self._waiting is waiting:
                    self._waiting = None

    def _unpack(self, value: Any) -> Any:
        if self.batch_index is None:
            return value
        ok, item = value[self.batch_index]
        if not ok:
            raise item
        return item

    def _finish(self, value: Any) -> None:
        if not self._released and self.replica is not None:
            self._released = True
            self.router.release(self.replica)
        for outcome in self.shadows:
            outcome.on_primary(value)

    # -- results -------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        while True:
            if self.ref is None:
                self._wait_routed_sync(timeout)
            try:
                value = self._unpack(ray.get(self.ref, timeout=timeout))
            except DEAD_ERRORS as exc:
                self.router.on_dead(self, exc)
                continue
            except ray.exceptions.GetTimeoutError:
                raise RequestTimeoutError(
                    f"request to endpoint {self.router.endpoint!r} did not finish within {timeout}s") from None
            except BaseException as exc:
                self._finish(exc)
                raise
            self._finish(value)
            return value

    def __await__(self) -> Any:
        return self._result_async().__await__()

    async def _result_async(self) -> Any:
        while True:
            if self.ref is None:
                await self._wait_routed_async()
            try:
                value = self._unpack(await self.ref)
            except DEAD_ERRORS as exc:
                self.router.on_dead(self, exc)
                continue
            except BaseException as exc:
                self._finish(exc)
                raise
            self._finish(value)
            return value

    def object_ref(self) -> Any:
        """The ObjectRef of the current attempt (routes first if the request is queued)."""
        if self.ref is None:
            self._wait_routed_sync(self.timeout_s)
        if self.batch_index is not None:
            return ray.put(self.result(self.timeout_s))  # a batch's ref holds every caller's answer
        return self.ref

    def __del__(self) -> None:
        # dropped without being awaited: free the replica slot when the call completes
        try:
            if not self._released and self.replica is not None and self.ref is not None:
                self._released = True
                router, replica = self.router, self.replica
                self.ref._on_completed(lambda _value: router.release(replica))
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    def __repr__(self) -> str:
        where = self.replica.actor_name if self.replica else "queued"
        return f"<Response {self.router.endpoint} {self.method_name} -> {where}>"


async def _await(awaitable: Any) -> Any:
    return await awaitable


@dataclass(frozen=True)
class HandleOptions:
    method_name: str = "__call__"
    shard_key: str | None = None
    session_id: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


class Handle:
    """Calls an endpoint. Picklable: it rebuilds itself in a Ray task or actor."""

    def __init__(self, router: EndpointRouter, options: HandleOptions | None = None) -> None:
        self._router = router
        self._options = options or HandleOptions()

    @property
    def endpoint(self) -> str:
        return self._router.endpoint

    @property
    def router(self) -> EndpointRouter:
        return self._router

    def options(self, *, method_name: str | None = None, shard_key: str | None = None,
                session_id: str | None = None, timeout_s: float | None = None) -> Handle:
        changes: dict[str, Any] = {}
        if method_name is not None:
            changes["method_name"] = method_name
        if shard_key is not None:
            changes["shard_key"] = str(shard_key)
        if session_id is not None:
            changes["session_id"] = str(session_id)
        if timeout_s is not None:
            changes["timeout_s"] = float(timeout_s)
        return Handle(self._router, replace(self._options, **changes))

    def remote(self, *args: Any, **kwargs: Any) -> Response:
        o = self._options
        session_id = o.session_id if o.session_id is not None else current_session_id.get()
        response = Response(self._router, args, kwargs, o.method_name, session_id, o.shard_key,
                            o.timeout_s)
        self._router.submit(response)
        return response

    # -- fanout ----------------------------------------------------------------------------
    def _fanout_refs(self, args: tuple, kwargs: dict) -> list[tuple[ReplicaInfo, Any]]:
        return [(r, self._router.send_direct(r, self._options.method_name, args, kwargs))
                for r in self._router.fanout_targets()]

    @staticmethod
    def _check_quorum(results: dict[str, Any], quorum: int | None, endpoint: str) -> dict[str, Any]:
        ok = sum(1 for v in results.values() if not isinstance(v, BaseException))
        if quorum is not None and ok < quorum:
            raise QuorumError(f"fanout to endpoint {endpoint!r}: {ok} of {len(results)} replicas "
                              f"answered, quorum is {quorum}")
        return results

    def fanout(self, *args: Any, quorum: int | None = None, timeout_s: float = 30.0,
               **kwargs: Any) -> dict[str, Any]:
        """Call every running replica of the endpoint's backends; one entry per replica:
        its result or the exception it raised."""
        results: dict[str, Any] = {}
        for replica, ref in self._fanout_refs(args, kwargs):
            try:
                results[replica.actor_name] = ray.get(ref, timeout=timeout_s)
            except DEAD_ERRORS as exc:
                self._router.mark_dead(replica)
                results[replica.actor_name] = exc
            except Exception as exc:  # noqa: BLE001 - reported per replica
                results[replica.actor_name] = exc
        return self._check_quorum(results, quorum, self.endpoint)

    async def fanout_async(self, *args: Any, quorum: int | None = None, timeout_s: float = 30.0,
                           **kwargs: Any) -> dict[str, Any]:
        pairs = self._fanout_refs(args, kwargs)

        async def one(ref: Any) -> Any:
            try:
                return await asyncio.wait_for(_await(ref), timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - reported per replica
                return exc

        values = await asyncio.gather(*(one(ref) for _, ref in pairs))
        results = {r.actor_name: v for (r, _), v in zip(pairs, values)}
        return self._check_quorum(results, quorum, self.endpoint)

    # -- sessions ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def session(self, session_id: str | None = None) -> AsyncIterator[Handle]:
        """All calls inside stick to one replica (nested handle calls too, via contextvars)."""
        with self.session_sync(session_id) as handle:
            yield handle

    @contextlib.contextmanager
    def session_sync(self, session_id: str | None = None) -> Iterator[Handle]:
        sid = session_id or uuid.uuid4().hex
        token = current_session_id.set(sid)
        try:
            yield self.options(session_id=sid)
        finally:
            current_session_id.reset(token)

    def __reduce__(self) -> Any:
        r = self._router
        if r.controller_name is None:
            raise TypeError("a Handle built on a static config source cannot be pickled")
        return (_rebuild, (r.endpoint, r.controller_name, r.namespace, self._options))

    def __repr__(self) -> str:
        return f"<Handle {self.endpoint} {self._options.method_name}>"


def _rebuild(endpoint: str, controller_name: str, namespace: str, options: HandleOptions) -> Handle:
    from serveplane.router import get_handle

    return Handle(get_handle(endpoint, controller_name, namespace).router, options)
