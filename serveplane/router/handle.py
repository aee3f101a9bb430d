"""``Handle``: what callers hold to call an endpoint.

``handle.remote(x)`` routes at once when a replica is free (one actor call on the caller's
thread: no task, no thread hop) and otherwise queues: on the caller's own loop for async
callers, on one background loop per process for sync callers. It returns a ``Response``.

Handles pickle as ``(endpoint, controller_name, namespace, options)`` and rebuild with
``serveplane.router.get_handle`` in the receiving process, which keeps one router per
endpoint per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Iterator

from serveplane.context import current_context, current_session_id
from serveplane.exceptions import ServeplaneError
from serveplane.records import ReplicaInfo
from serveplane.router.response import Response
from serveplane.router.router import EndpointRouter
from serveplane.router.stream import ResponseStream
from serveplane.router.transport import Failure

DEFAULT_FANOUT_TIMEOUT_S = 30.0


class QuorumError(ServeplaneError):
    """Fewer replicas answered a fanout than its quorum."""

    def __init__(self, message: str, results: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.results = results or {}

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.results))


@dataclass(frozen=True)
class HandleOptions:
    method_name: str = "__call__"
    shard_key: str | None = None
    session_id: str | None = None
    timeout_s: float | None = None          # a deadline; None: none (queued at most QUEUE_TIMEOUT_S)
    stream: bool = False
    http: bool = False
    http_method: str | None = None           # for backends of the classic (1.x) convention
    http_headers: dict[str, str] | None = None


class Handle:
    """Calls an endpoint.

    ``Handle("ep", source=StaticSource())`` builds a router of its own on that config
    source (tests, embedding); ``Handle("ep")`` or ``get_handle(...)`` share the process's
    router fed by long-poll from the controller.
    """

    __slots__ = ("_router", "_options")

    def __init__(self, endpoint: str | EndpointRouter, source: Any = None, *,
                 controller_name: str | None = None, namespace: str | None = None,
                 options: HandleOptions | None = None) -> None:
        if isinstance(endpoint, EndpointRouter):
            router = endpoint
        elif source is not None:
            router = EndpointRouter(endpoint, source, controller_name=controller_name,
                                    namespace=namespace)
        else:
            from serveplane.records import CONTROLLER_NAME, DEFAULT_NAMESPACE
            from serveplane.router import shared_router

            router = shared_router(endpoint, controller_name or CONTROLLER_NAME,
                                   namespace or DEFAULT_NAMESPACE)
        self._router = router
        self._options = options or _DEFAULT_OPTIONS

    @property
    def endpoint(self) -> str:
        return self._router.endpoint

    @property
    def router(self) -> EndpointRouter:
        return self._router

    def options(self, *, method_name: str | None = None, shard_key: Any = None,
                session_id: Any = None, timeout_s: float | None = None,
                http: bool | None = None, http_method: str | None = None,
                http_headers: dict[str, str] | None = None, stream: bool | None = None) -> Handle:
        """A handle on the same router with some call options changed. ``http=True`` sends
        calls as the HTTP proxy does: they reach only the methods the backend exposes over
        HTTP (``__call__``, ``BackendConfig.http_methods``, ``@serveplane.http_method``).
        ``http_method`` and ``http_headers`` are what a backend of the classic (1.x)
        convention reads from its request's ``.method`` and ``.headers``.

        ``timeout_s`` is a deadline that travels with the request: queued past it, the
        request fails (``RequestTimeoutError``) and never runs; running past it, its call is
        cancelled; the replica reads what is left (``get_request_context().remaining_s()``)
        and handle calls made there inherit it. ``stream=True``: ``remote()`` returns a
        ``ResponseStream`` of the chunks a generator method yields."""
        changes: dict[str, Any] = {}
        if http is not None:
            changes["http"] = bool(http)
        if http_method is not None:
            if not isinstance(http_method, str) or not http_method:
                raise ValueError(f"http_method is {http_method!r}; it must be a method name such as 'POST'")
            changes["http_method"] = http_method.upper()
        if http_headers is not None:
            if not isinstance(http_headers, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in http_headers.items()):
                raise ValueError(f"http_headers is {http_headers!r}; it must be a dict of str to str")
            changes["http_headers"] = dict(http_headers)
        if method_name is not None:
            if not isinstance(method_name, str) or not method_name:
                raise ValueError(f"method_name is {method_name!r}; it must be a non-empty string")
            changes["method_name"] = method_name
        if shard_key is not None:
            changes["shard_key"] = str(shard_key)
        if session_id is not None:
            changes["session_id"] = str(session_id)
        if timeout_s is not None:
            if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
                raise ValueError(f"timeout_s is {timeout_s!r}; it must be a number of seconds > 0")
            changes["timeout_s"] = float(timeout_s)
        if stream is not None:
            changes["stream"] = bool(stream)
        return Handle(self._router, options=replace(self._options, **changes))

    def remote(self, *args: Any, **kwargs: Any) -> Response:
        """Send one request; ``Response`` arguments are passed replica to replica. With
        ``options(stream=True)`` it returns a ``ResponseStream``."""
        o = self._options
        session_id = o.session_id
        if session_id is None:
            session_id = current_session_id.get()
        parent = current_context.get()  # made while running a request: inherit its deadline
        response = (ResponseStream if o.stream else Response)(
            self._router, args, kwargs, o.method_name, session_id, o.shard_key, o.timeout_s, o.http,
            o.http_method, o.http_headers, parent.meta.deadline if parent is not None else None)
        if parent is not None:
            parent.add_child(response)  # cancelled with the request that made it
        self._router.submit(response.request)
        return response

    # -- fanout ----------------------------------------------------------------------------
    def _fanout_send(self, args: tuple, kwargs: dict) -> list[tuple[ReplicaInfo, Any]]:
        router = self._router
        targets = router.fanout_targets()
        sent = []
        for replica in targets:
            try:
                sent.append((replica, router.send_direct(replica, self._options.method_name, args, kwargs,
                                                         http=self._options.http)))
            except Exception as exc:  # noqa: BLE001 - reported for that replica
                sent.append((replica, _Failed(exc)))
        return sent

    def _fanout_outcome(self, replica: ReplicaInfo, error: BaseException) -> BaseException:
        kind = self._router.transport.classify(error, replica)
        if kind is Failure.REPLICA_DIED:
            self._router.mark_dead(replica)
        elif kind is Failure.REPLICA_UNAVAILABLE:
            self._router.back_off(replica)
        return error

    def fanout(self, *args: Any, quorum: int | None = None,
               timeout_s: float = DEFAULT_FANOUT_TIMEOUT_S, **kwargs: Any) -> dict[str, Any]:
        """Call every running replica of the endpoint's traffic backends at once.

        Returns one entry per replica (its actor name): the answer, or the exception that
        replica raised (a timeout too). Raises ``QuorumError`` when fewer than ``quorum``
        replicas answered.
        """
        _check_quorum_arg(quorum)
        get = self._router.transport.get
        deadline = time.monotonic() + timeout_s
        results: dict[str, Any] = {}
        for replica, ref in self._fanout_send(args, kwargs):
            if isinstance(ref, _Failed):
                results[replica.actor_name] = ref.error
                continue
            try:
                results[replica.actor_name] = get(ref, max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - reported per replica
                results[replica.actor_name] = self._fanout_outcome(replica, exc)
        return self._check_quorum(results, quorum)

    async def fanout_async(self, *args: Any, quorum: int | None = None,
                           timeout_s: float = DEFAULT_FANOUT_TIMEOUT_S, **kwargs: Any) -> dict[str, Any]:
        """``fanout`` for async callers (on the caller's loop)."""
        _check_quorum_arg(quorum)
        sent = self._fanout_send(args, kwargs)

        async def one(replica: ReplicaInfo, ref: Any) -> Any:
            if isinstance(ref, _Failed):
                return ref.error
            try:
                return await asyncio.wait_for(_awaited(ref), timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - reported per replica
                return self._fanout_outcome(replica, exc)

        values = await asyncio.gather(*(one(r, ref) for r, ref in sent))
        return self._check_quorum({r.actor_name: v for (r, _), v in zip(sent, values)}, quorum)

    def _check_quorum(self, results: dict[str, Any], quorum: int | None) -> dict[str, Any]:
        answered = sum(1 for v in results.values() if not isinstance(v, BaseException))
        if quorum is not None and answered < quorum:
            failed = {k: f"{type(v).__name__}: {v}" for k, v in results.items()
                      if isinstance(v, BaseException)}
            raise QuorumError(
                f"fanout to endpoint {self.endpoint!r}: {answered} of {len(results)} replicas "
                f"answered, quorum is {quorum}; failed: {failed or 'none'}", results)
        return results

    # -- sessions ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def session(self, session_id: str | None = None) -> AsyncIterator[Handle]:
        """All calls inside stick to one replica, nested handle calls too (contextvars)."""
        with self.session_sync(session_id) as handle:
            yield handle

    @contextlib.contextmanager
    def session_sync(self, session_id: str | None = None) -> Iterator[Handle]:
        sid = str(session_id) if session_id is not None else uuid.uuid4().hex
        token = current_session_id.set(sid)
        try:
            yield self.options(session_id=sid)
        finally:
            current_session_id.reset(token)

    # -- pickling ------------------------------------------------------------------------------
    def __reduce__(self) -> Any:
        r = self._router
        if r.controller_name is None:
            raise TypeError(
                f"the handle of endpoint {r.endpoint!r} reads its config from a "
                f"{type(r.source).__name__}, which exists only in this process; build it with "
                "serveplane.router.get_handle(endpoint, controller_name, namespace) (or "
                "client.get_handle) to pass it to Ray tasks and actors")
        return (_rebuild, (r.endpoint, r.controller_name, r.namespace, self._options))

    def __repr__(self) -> str:
        return f"<Handle {self.endpoint}.{self._options.method_name}>"


_DEFAULT_OPTIONS = HandleOptions()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _check_quorum_arg(quorum: int | None) -> None:
    if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 0):
        raise ValueError(f"quorum is {quorum!r}; it must be an integer >= 0 or None")


def _rebuild(endpoint: str, controller_name: str, namespace: str, options: HandleOptions) -> Handle:
    from serveplane.router import get_handle

    return Handle(get_handle(endpoint, controller_name, namespace).router, options=options)
