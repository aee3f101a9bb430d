"""``Response``: one request, from ``handle.remote(x)`` to its answer.

A ``Response`` is awaitable, has ``.result(timeout)``, gives an ``ObjectRef`` for Ray tasks
(``object_ref()``), and can be passed as an argument to another handle call: the router
sends the ``ObjectRef`` of its current attempt, so the value goes from replica to replica
and never through the caller. If that attempt's replica dies, the second call fails with
a dependency error; the router then waits for this response's own retry and sends the
second call again with the final ``ObjectRef``.

Several awaiters (threads, loops) may wait on one response; whoever first sees an attempt
fail decides for everyone (``EndpointRouter.on_failure``).

``cancel()``, or cancelling the asyncio task that awaits it, cancels the request (see
``EndpointRouter.cancel``). A request made with ``timeout_s`` has a deadline: it never
starts after it, and is cancelled (``RequestTimeoutError``) when it passes while running.
Its state (``RequestState``) is moved only by its router.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray.exceptions import GetTimeoutError

from serveplane import tracing
from serveplane.exceptions import RequestCancelledError, RequestTimeoutError
from serveplane.router import loop as loops
from serveplane.router.state import RequestState

if TYPE_CHECKING:
    from serveplane.records import ReplicaInfo
    from serveplane.router.router import EndpointRouter


# A request without a deadline waits this long at most for a slot (then NoReplicasError).
QUEUE_TIMEOUT_S = 60.0


class Response:
    # Fields are shared with the router that routes this response (one record, two modules);
    # ``state`` is moved by the router only, under its lock.
    __slots__ = ("router", "args", "kwargs", "deps", "method_name", "session_id", "shard_key",
                 "http", "timeout_s", "request_id", "backend", "replica", "ref", "attempts", "queued_under",
                 "shadows", "batch_index", "batch", "waiting", "state", "failure", "previous_ref",
                 "previous_replica", "producers", "released", "watched", "started", "http_method",
                 "http_headers", "trace", "deadline", "wall_deadline", "queue_deadline", "stream", "chunks",
                 "__weakref__")

    def __init__(self, router: EndpointRouter, args: tuple, kwargs: dict, method_name: str,
                 session_id: str | None, shard_key: str | None, timeout_s: float | None,
                 http: bool = False, http_method: str | None = None,
                 http_headers: dict[str, str] | None = None, wall_deadline: float | None = None,
                 stream: bool = False) -> None:
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
        self.started = now = self.router.clock.monotonic()  # the latency a caller sees is measured from here
        # the deadline: monotonic here, wall clock on the wire; the earlier of this request's
        # timeout_s and the one it inherits (a handle call made while running a request)
        if timeout_s is not None:
            own = self.router.clock.time() + timeout_s
            wall_deadline = own if wall_deadline is None else min(own, wall_deadline)
        self.wall_deadline = wall_deadline
        self.deadline = None if wall_deadline is None else now + (wall_deadline - self.router.clock.time())
        self.queue_deadline = self.deadline if self.deadline is not None else now + QUEUE_TIMEOUT_S
        self.stream = stream
        self.chunks = 0                  # chunks a stream delivered
        self.trace = tracing.capture() if tracing.ENABLED else None  # where the call was made
        self.backend: str | None = None
        self.replica: ReplicaInfo | None = None
        self.ref: Any = None            # the current attempt's ref; None while (re-)routing
        self.attempts = 0
        self.queued_under: str | None = None
        self.shadows: list[Any] = []
        self.batch_index: int | None = None  # position in a router-side batch
        self.batch: BatchCall | None = None  # that batch's call, awaited once per event loop
        self.waiting: Any = None         # Task / concurrent Future while the request waits
        self.state = RequestState.NEW
        self.released = True             # holds no slot (set False when it claims one)
        self.watched = False             # a completion callback frees its slot
        self.failure: BaseException | None = None  # the router's verdict, when it failed
        self.previous_ref: Any = None    # the last failed attempt's ref, while re-routing
        self.previous_replica: ReplicaInfo | None = None  # ... and the replica it ran on
        # replicas whose attempts made the Response arguments of the current attempt
        self.producers: tuple[ReplicaInfo, ...] = ()

    @property
    def queue_timeout_s(self) -> float:
        return self.queue_deadline - self.started

    @property
    def done(self) -> bool:
        """The outcome is final (answered, failed for good, or cancelled)."""
        return self.state.final

    def cancel(self) -> bool:
        """Cancel this request: queued, it never reaches a replica; running, the replica's
        call is cancelled (async user code gets ``CancelledError``; a sync method that has
        not started never runs) and its slot is free at once. Awaiting it then raises
        ``RequestCancelledError``. Returns False if it had already finished."""
        return self.router.cancel(self)

    def _caller_cancelled(self) -> None:
        """The task awaiting this request was cancelled: so is the request (by its deadline's
        timer when that has passed, else by the caller)."""
        if self.deadline is not None and self.router.clock.monotonic() >= self.deadline:
            self._timed_out()
        else:
            self.router.cancel(self)

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.router.clock.monotonic()

    def _timed_out(self) -> RequestTimeoutError:
        """The deadline passed: cancel the call; the error every awaiter gets."""
        error = RequestTimeoutError(f"request to endpoint {self.router.endpoint!r} passed its deadline "
                                    f"({self.timeout_s:g}s)" if self.timeout_s is not None else
                                    f"request to endpoint {self.router.endpoint!r} passed the deadline "
                                    "it inherited from the request that made it")
        self.router.cancel(self, error)
        failure = self.failure
        return failure if isinstance(failure, RequestTimeoutError) else error

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
            if self.state.final and self.failure is not None:
                raise self.failure
            waiting = self.waiting
            if waiting is None:
                raise RuntimeError(f"{self!r} has neither an attempt nor a routing in progress")
            try:
                await loops.wait_async(waiting)
            except asyncio.CancelledError:
                self._caller_cancelled()
                raise

    # -- results -----------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Block until the answer arrives (retries included); raises the request's error.
        ``timeout`` bounds this wait only; the request's deadline (``timeout_s``) ends the
        request itself."""
        waited = None if timeout is None else self.router.clock.monotonic() + timeout
        deadline: float | None
        if self.deadline is not None and (waited is None or self.deadline <= waited):
            deadline, own = self.deadline, True
        else:
            deadline, own = waited, False
        router = self.router
        while True:
            ref = self.ref
            if ref is None:
                if self.state.final and self.failure is not None:
                    raise self.failure
                # the queue enforces the request's deadline while it waits
                self._wait_routed_sync(None if waited is None else max(0.0, waited - self.router.clock.monotonic()))
                continue
            remaining = None if deadline is None else max(0.0, deadline - self.router.clock.monotonic())
            try:
                value = router.transport.get(ref, remaining)
                if self.batch_index is not None:
                    value = _unpack(value, self.batch_index)
            except GetTimeoutError:
                if own:
                    raise self._timed_out() from None
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
                await self.routed()  # the queue enforces the deadline while it waits
                continue
            try:
                batch = self.batch
                pending = ref if batch is None or batch.ref is not ref else batch.value()
                if self.deadline is None:
                    value = await pending
                else:
                    with loops.Deadline(self.deadline - self.router.clock.monotonic()):
                        value = await pending
                if self.batch_index is not None:
                    value = _unpack(value, self.batch_index)
            except loops.DeadlinePassed:
                raise self._timed_out() from None
            except asyncio.CancelledError:
                self._caller_cancelled()
                raise
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
            self.result(timeout)
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
        deadline = None if timeout is None else self.router.clock.monotonic() + timeout
        while self.ref is None:
            if self.state.final and self.failure is not None:
                raise self.failure
            self._wait_routed_sync(None if deadline is None else max(0.0, deadline - self.router.clock.monotonic()))
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
        return f"<Response {self.router.endpoint}.{self.method_name} -> {where} ({self.state.value})>"


class BatchCall:
    """The one actor call of a router-side batch. Its callers on one event loop share one
    await of its ref (one Ray completion callback per loop, not one per caller); each
    caller waits through a shield, so cancelling one caller leaves the others waiting."""

    __slots__ = ("ref", "_tasks")

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self._tasks: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}

    def value(self) -> Any:
        loop = asyncio.get_running_loop()
        task = self._tasks.get(loop)
        if task is None:
            task = self._tasks[loop] = asyncio.ensure_future(_awaited(self.ref))
        return asyncio.shield(task)


async def _awaited(ref: Any) -> Any:
    return await ref


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

        return ray.put(response.result())
    return ref


def _unpack(value: Any, index: int) -> Any:
    ok, item = value[index]
    if not ok:
        raise item
    return item
