"""``Response``: one request, from ``handle.remote(x)`` to its answer.

A ``Response`` is awaitable, has ``.result(timeout)``, gives an ``ObjectRef`` for Ray tasks
(``object_ref()``), and can be passed as an argument to another handle call: the router
sends the ``ObjectRef`` of its current attempt, so the value goes from replica to replica
and never through the caller. If that attempt's replica dies, the second call fails with
a dependency error; the router then waits for this response's own retry and sends the
second call again with the final ``ObjectRef``.

Several awaiters (threads, loops) may wait on one response; whoever first sees an attempt
fail decides for everyone (``EndpointRouter.on_failure``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ray.exceptions import GetTimeoutError

from serveplane import tracing
from serveplane.exceptions import RequestTimeoutError
from serveplane.router import loop as loops

if TYPE_CHECKING:
    from serveplane.records import ReplicaInfo
    from serveplane.router.router import EndpointRouter


class Response:
    # Fields are shared with the router that routes this response (one record, two modules).
    __slots__ = ("router", "args", "kwargs", "deps", "method_name", "session_id", "shard_key",
                 "http", "timeout_s", "request_id", "backend", "replica", "ref", "attempts", "queued_under",
                 "shadows", "batch_index", "waiting", "done", "failure", "previous_ref",
                 "previous_replica", "producers", "released", "watched", "started", "http_method",
                 "http_headers", "trace", "__weakref__")

    def __init__(self, router: EndpointRouter, args: tuple, kwargs: dict, method_name: str,
                 session_id: str | None, shard_key: str | None, timeout_s: float,
                 http: bool = False, http_method: str | None = None,
                 http_headers: dict[str, str] | None = None) -> None:
        self.router = router
        self.args = args
        self.kwargs = kwargs
        self.deps: tuple[Response, ...] = _responses_in(args, kwargs) if (args or kwargs) else ()
        self.method_name = method_name
        self.session_id = session_id
        self.shard_key = shard_key
        self.http = http  # from the HTTP proxy: only methods exposed over HTTP may run
        self.timeout_s = timeout_s
        self.http_method = http_method    # for classic-convention backends (RequestMetadata)
        self.http_headers = http_headers
        self.request_id = router.next_request_id()
        self.started = time.monotonic()  # the latency a caller sees is measured from here
        self.trace = tracing.capture() if tracing.ENABLED else None  # where the call was made
        self.backend: str | None = None
        self.replica: ReplicaInfo | None = None
        self.ref: Any = None            # the current attempt's ref; None while (re-)routing
        self.attempts = 0
        self.queued_under: str | None = None
        self.shadows: list[Any] = []
        self.batch_index: int | None = None  # position in a router-side batch
        self.waiting: Any = None         # Task / concurrent Future while the request waits
        self.done = False                # the outcome is final (read, or failed for good)
        self.released = True             # holds no slot (set False when it claims one)
        self.watched = False             # a completion callback frees its slot
        self.failure: BaseException | None = None  # the router's verdict, when it failed
        self.previous_ref: Any = None    # the last failed attempt's ref, while re-routing
        self.previous_replica: ReplicaInfo | None = None  # ... and the replica it ran on
        # replicas whose attempts made the Response arguments of the current attempt
        self.producers: tuple[ReplicaInfo, ...] = ()

    def resolved_args(self) -> tuple[tuple, dict]:
        """Responses among the arguments become the ObjectRefs of their current attempts."""
        args = tuple(_ref_of(a) if isinstance(a, Response) else a for a in self.args)
        kwargs = {k: (_ref_of(v) if isinstance(v, Response) else v) for k, v in self.kwargs.items()}
        return args, kwargs

    def argument_producers(self) -> tuple[ReplicaInfo, ...]:
        """The replicas whose attempts ``resolved_args`` passes on (to tell, if the call
        fails on an actor error, whether it was about an argument)."""
        producers = []
        for dep in self.deps:
            replica = dep.replica if dep.ref is not None else dep.previous_replica
            if replica is not None:
                producers.append(replica)
        return tuple(producers)

    # -- waiting for a replica ---------------------------------------------------------------
    def _wait_routed_sync(self, timeout: float | None) -> None:
        waiting = self.waiting
        if waiting is None:
            raise RuntimeError(f"{self!r} has neither an attempt nor a routing in progress")
        try:
            loops.wait_sync(waiting, timeout)
        except TimeoutError:
            if not waiting.done():
                raise RequestTimeoutError(
                    f"request to endpoint {self.router.endpoint!r} was still waiting for a replica "
                    f"after {timeout:g}s") from None
            raise

    async def routed(self) -> None:
        """Wait until this request has been sent to a replica (not for its answer)."""
        while self.ref is None:
            if self.done and self.failure is not None:
                raise self.failure
            waiting = self.waiting
            if waiting is None:
                raise RuntimeError(f"{self!r} has neither an attempt nor a routing in progress")
            await loops.wait_async(waiting)

    # -- results -----------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Block until the answer arrives (retries included); raises the request's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        router = self.router
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ref = self.ref
            if ref is None:
                if self.done and self.failure is not None:
                    raise self.failure
                self._wait_routed_sync(remaining)
                continue
            try:
                value = router.transport.get(ref, remaining)
                if self.batch_index is not None:
                    value = _unpack(value, self.batch_index)
            except GetTimeoutError:
                raise RequestTimeoutError(f"request to endpoint {router.endpoint!r} did not finish "
                                          f"within {timeout:g}s") from None
            except Exception as exc:  # noqa: BLE001 - classified by the router
                error = router.on_failure(self, exc, ref)
                if error is None:
                    continue
                self._report(error)
                if error is exc:
                    raise
                raise error from exc
            router.finish(self)
            if self.shadows:
                self._report(value)
            return value

    def __await__(self) -> Any:
        return self._result_async().__await__()

    async def _result_async(self) -> Any:
        router = self.router
        while True:
            ref = self.ref
            if ref is None:
                await self.routed()
                continue
            try:
                value = await ref
                if self.batch_index is not None:
                    value = _unpack(value, self.batch_index)
            except Exception as exc:  # noqa: BLE001 - classified by the router
                error = router.on_failure(self, exc, ref)
                if error is None:
                    continue
                self._report(error)
                if error is exc:
                    raise
                raise error from exc
            router.finish(self)
            if self.shadows:
                self._report(value)
            return value

    def _report(self, outcome: Any) -> None:
        shadows, self.shadows = self.shadows, []
        for shadow in shadows:
            shadow.on_primary(outcome)

    def object_ref(self, timeout: float | None = None) -> Any:
        """An ``ObjectRef`` holding this request's answer, for Ray tasks.

        Waits until the request is final (retries on other replicas included), so the ref
        never holds a dead replica's error; an application error stays in the ref and is
        raised by ``ray.get``. A request that failed in the router (back-pressure, replica
        died past its retries) raises here.
        """
        try:
            self.result(timeout if timeout is not None else self.timeout_s)
        except RequestTimeoutError:
            raise
        except Exception:  # noqa: BLE001 - an application error stays in the ref
            if self.failure is not None or self.ref is None or self.batch_index is not None:
                raise
        if self.batch_index is not None:
            import ray

            return ray.put(self.result())  # a batch's ref holds every caller's answer
        return self.ref

    def sent_ref(self, timeout: float | None = None) -> Any:
        """The ``ObjectRef`` of this request's attempt as soon as a replica has it (not when
        it completes), for callers that ``ray.get`` it themselves, as Ray Serve 1.x's
        ``handle.remote()`` returned. The answer is then theirs to read: there is no retry,
        and a replica that dies leaves its error in the ref (``object_ref()`` waits for the
        final answer instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.ref is None:
            if self.done and self.failure is not None:
                raise self.failure
            self._wait_routed_sync(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.batch_index is not None:
            return self.object_ref(timeout)  # a batch's ref holds every caller's answer
        ref = self.ref
        self.router.detach(self)
        return ref

    async def sent_ref_async(self) -> Any:
        """``sent_ref`` for async callers."""
        await self.routed()
        if self.batch_index is not None:
            import ray

            return ray.put(await self)
        ref = self.ref
        self.router.detach(self)
        return ref

    def __reduce__(self) -> Any:
        raise TypeError("a serveplane Response cannot be pickled; pass response.object_ref() to a "
                        "Ray task, or pass the Response itself to another handle call")

    def __del__(self) -> None:
        # dropped before its answer was read: free the slot when the call completes
        try:
            if not self.released and not self.watched and self.ref is not None:
                router, request = self.router, self
                router.transport.on_completed(self.ref, lambda _value: router.release(request))
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    def __repr__(self) -> str:
        where = self.replica.actor_name if self.replica is not None else (
            "failed" if self.failure is not None else "waiting")
        return f"<Response {self.router.endpoint}.{self.method_name} -> {where}>"


def _responses_in(args: tuple, kwargs: dict) -> tuple[Response, ...]:
    found = [a for a in args if isinstance(a, Response)]
    if kwargs:
        found.extend(v for v in kwargs.values() if isinstance(v, Response))
    return tuple(found)


def _ref_of(response: Response) -> Any:
    ref = response.ref
    if ref is None:
        # being retried right now: pass the failed attempt's ref; the call that receives it
        # fails as "dependency died" and is sent again once this response is final
        ref = response.previous_ref
        if ref is None:
            raise RuntimeError(f"{response!r} was passed on before it had been sent to a replica")
    elif response.batch_index is not None:
        import ray

        return ray.put(response.result(response.timeout_s))
    return ref


def _unpack(value: Any, index: int) -> Any:
    ok, item = value[index]
    if not ok:
        raise item
    return item
