"""``Response``: the caller's side of one request, from ``handle.remote(x)`` to its answer.

A ``Response`` is awaitable, has ``.result(timeout)``, gives an ``ObjectRef`` for Ray tasks
(``object_ref()``), and can be passed as an argument to another handle call: the router
sends the ``ObjectRef`` of its current attempt, so the value goes from replica to replica
and never through the caller.

It holds no routing state: the request's record is its ``RoutedRequest``, moved by its
router only; a ``Response`` reads it (``state``, ``replica``, ``request_id``, ...) and asks
the router to act. Several awaiters (threads, loops) may wait on one response; whoever
first sees an attempt fail has the router decide for everyone (``on_failure``).

``cancel()``, or cancelling the asyncio task that awaits it, cancels the request. A
request made with ``timeout_s`` has a deadline: it never starts after it, and is
cancelled (``RequestTimeoutError``) when it passes while running.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray.exceptions import GetTimeoutError

from serveplane.exceptions import RequestCancelledError, RequestTimeoutError
from serveplane.router import loop as loops
from serveplane.router.batcher import BatchCall
from serveplane.router.request import QUEUE_TIMEOUT_S, RoutedRequest  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from serveplane.router.router import EndpointRouter

# what a caller may read of its request (read-only)
_READABLE = frozenset({
    "request_id", "state", "replica", "backend", "failure", "attempts", "ref", "deadline",
    "wall_deadline", "method_name", "args", "kwargs", "stream", "chunks", "timeout_s", "session_id",
    "shard_key", "trace", "started", "batch_index", "http", "previous_ref", "queue_timeout_s", "waiting",
})


def _deps_of(args: tuple, kwargs: dict) -> tuple[RoutedRequest, ...]:
    return tuple(v._request for v in (*args, *kwargs.values()) if isinstance(v, Response))


class Response:
    __slots__ = ("router", "_request", "__weakref__")

    def __init__(self, router: EndpointRouter, args: tuple, kwargs: dict, method_name: str,
                 session_id: str | None, shard_key: str | None, timeout_s: float | None,
                 http: bool = False, http_method: str | None = None,
                 http_headers: dict[str, str] | None = None, wall_deadline: float | None = None,
                 stream: bool = False) -> None:
        self.router = router
        deps: tuple[RoutedRequest, ...] = ()
        for value in args:
            if isinstance(value, Response):
                deps = _deps_of(args, kwargs)
                break
        else:
            if kwargs:
                deps = _deps_of(args, kwargs)
        self._request = RoutedRequest(
            router.next_request_id(), router.endpoint, router.clock, args, kwargs, deps, method_name,
            session_id, shard_key, timeout_s, http, http_method, http_headers, wall_deadline, stream)

    _request: RoutedRequest

    def __getattr__(self, name: str) -> Any:
        if name in _READABLE:
            return getattr(self._request, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def request(self) -> RoutedRequest:
        """The router's record of this request (read it; only its router moves it)."""
        return self._request

    @property
    def done(self) -> bool:
        """The outcome is final (answered, failed for good, or cancelled)."""
        return self._request.state.final

    def cancel(self) -> bool:
        """Cancel this request: queued, it never reaches a replica; running, the replica's
        call is cancelled (async user code gets ``CancelledError``; a sync method that has
        not started never runs) and its slot is free at once. Awaiting it then raises
        ``RequestCancelledError``. Returns False if it had already finished."""
        return self.router.cancel(self._request)

    def _caller_cancelled(self) -> None:
        """The task awaiting this request was cancelled: so is the request (by its deadline's
        timer when that has passed, else by the caller)."""
        deadline = self._request.deadline
        if deadline is not None and self.router.clock.monotonic() >= deadline:
            self._timed_out()
        else:
            self.router.cancel(self._request)

    def _timed_out(self) -> RequestTimeoutError:
        """The deadline passed: cancel the call; the error every awaiter gets."""
        request = self._request
        error = RequestTimeoutError(
            f"request to endpoint {self.router.endpoint!r} passed its deadline ({request.timeout_s:g}s)"
            if request.timeout_s is not None else
            f"request to endpoint {self.router.endpoint!r} passed the deadline it inherited from the "
            "request that made it")
        self.router.cancel(request, error, timed_out=True)
        failure = request.failure
        return failure if isinstance(failure, RequestTimeoutError) else error

    def _ended(self) -> BaseException:
        request = self._request
        return request.failure or RequestCancelledError(f"{self!r} was cancelled")

    def argument_ref(self) -> Any:
        """The ref another call gets for this response as its argument: its current
        attempt's, or while it is retried, its failed one's (the call that receives it fails
        as "dependency died" and is sent again once this response is final)."""
        request = self._request
        ref = request.ref if request.ref is not None else request.previous_ref
        if ref is None or request.batch is not None:
            raise RuntimeError(f"{self!r} was passed on before it had been sent to a replica")
        return ref

    # -- waiting for a replica ------------------------------------------------------------------
    def _wait_routed_sync(self, timeout: float | None) -> None:
        request = self._request
        waiting = request.waiting
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
        self._check_progress(waiting)

    def _check_progress(self, waiting: Any) -> None:
        request = self._request
        if request.ref is None and not request.state.final and request.waiting is waiting:
            raise RuntimeError(f"{self!r}: its routing ended without sending it")

    async def routed(self) -> None:
        """Wait until this request has been sent to a replica (not for its answer)."""
        request = self._request
        while request.ref is None:
            if request.state.final:
                raise self._ended()
            waiting = request.waiting
            if waiting is None:
                raise RuntimeError(f"{self!r} has neither an attempt nor a routing in progress")
            try:
                await loops.wait_async(waiting)
            except asyncio.CancelledError:
                self._caller_cancelled()
                raise
            self._check_progress(waiting)

    # -- results ------------------------------------------------------------------------------------
    def _settle(self, error: Exception, ref: Any) -> BaseException | None:
        """An attempt raised: ``None`` if it goes on elsewhere, else what the caller gets."""
        outcome = self.router.on_failure(self._request, error, ref)
        if outcome is not None:
            self.router.report_to_shadows(self._request, outcome)
        return outcome

    def _answered(self, value: Any) -> Any:
        request = self._request
        if request.failure is not None and request.outcome is not None and request.outcome.value != "answered":
            raise self._ended()  # cancelled (or timed out) while its answer was on the way
        self.router.finish(request)
        if request.shadows:
            self.router.report_to_shadows(request, value)
        return value

    def result(self, timeout: float | None = None) -> Any:
        """Block until the answer arrives (retries included); raises the request's error.
        ``timeout`` bounds this wait only; the request's deadline (``timeout_s``) ends the
        request itself."""
        request, clock, transport = self._request, self.router.clock, self.router.transport
        waited = None if timeout is None else clock.monotonic() + timeout
        deadline: float | None
        if request.deadline is not None and (waited is None or request.deadline <= waited):
            deadline, own = request.deadline, True
        else:
            deadline, own = waited, False
        while True:
            ref = request.ref
            if ref is None:
                if request.state.final:
                    raise self._ended()
                # the queue enforces the request's deadline while it waits
                self._wait_routed_sync(None if waited is None else max(0.0, waited - clock.monotonic()))
                continue
            remaining = None if deadline is None else max(0.0, deadline - clock.monotonic())
            try:
                value = transport.get(ref, remaining)
                if request.batch is not None and request.batch.ref is ref:
                    value = BatchCall.unpack(value, request.batch_index or 0)
            except GetTimeoutError:
                if own:
                    raise self._timed_out() from None
                raise RequestTimeoutError(f"request to endpoint {self.router.endpoint!r} did not finish "
                                          f"within {timeout:g}s") from None
            except Exception as exc:  # noqa: BLE001 - classified by the router
                error = self._settle(exc, ref)
                if error is None:
                    continue
                raise error from (None if error is exc else exc)
            return self._answered(value)

    def __await__(self) -> Any:
        return self._result_async().__await__()

    async def _result_async(self) -> Any:
        request, clock = self._request, self.router.clock
        while True:
            ref = request.ref
            if ref is None:
                await self.routed()  # the queue enforces the deadline while it waits
                continue
            batch = request.batch
            try:
                pending = ref if batch is None or batch.ref is not ref else batch.value()
                if request.deadline is None:
                    value = await pending
                else:
                    with loops.Deadline(request.deadline - clock.monotonic()):
                        value = await pending
                if batch is not None and batch.ref is ref:
                    value = BatchCall.unpack(value, request.batch_index or 0)
            except loops.DeadlinePassed:
                raise self._timed_out() from None
            except asyncio.CancelledError:
                self._caller_cancelled()
                raise
            except Exception as exc:  # noqa: BLE001 - classified by the router
                error = self._settle(exc, ref)
                if error is None:
                    continue
                raise error from (None if error is exc else exc)
            return self._answered(value)

    def object_ref(self, timeout: float | None = None) -> Any:
        """An ``ObjectRef`` holding this request's answer, for Ray tasks.

        Waits until the request is final (retries on other replicas included), so the ref
        never holds a dead replica's error; an application error stays in the ref and is
        raised by ``ray.get``. A request that failed in the router (back-pressure, replica
        died past its retries) raises here.
        """
        request = self._request
        try:
            value = self.result(timeout)
        except RequestTimeoutError:
            raise
        except Exception:  # noqa: BLE001 - an application error stays in the ref
            if request.outcome is None or request.outcome.value != "answered" or request.ref is None \
                    or request.batch is not None:
                raise
            return request.ref
        if request.batch is not None:
            return self.router.transport.put(value)  # a batch's ref holds every caller's answer
        return request.ref

    def sent_ref(self, timeout: float | None = None) -> Any:
        """The ``ObjectRef`` of this request's attempt as soon as a replica has it (not when
        it completes), for callers that ``ray.get`` it themselves, as Ray Serve 1.x's
        ``handle.remote()`` returned. The answer is then theirs to read: there is no retry,
        and a replica that dies leaves its error in the ref (``object_ref()`` waits for the
        final answer instead)."""
        request, clock = self._request, self.router.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        while request.ref is None:
            if request.state.final:
                raise self._ended()
            self._wait_routed_sync(None if deadline is None else max(0.0, deadline - clock.monotonic()))
        if request.batch is not None:
            return self.object_ref(timeout)  # a batch's ref holds every caller's answer
        ref = request.ref
        self.router.detach(request)
        return ref

    async def sent_ref_async(self) -> Any:
        """``sent_ref`` for async callers."""
        await self.routed()
        request = self._request
        if request.batch is not None:
            return self.router.transport.put(await self)
        ref = request.ref
        self.router.detach(request)
        return ref

    def __reduce__(self) -> Any:
        raise TypeError("a serveplane Response cannot be pickled; pass response.object_ref() to a "
                        "Ray task, or pass the Response itself to another handle call")

    def __del__(self) -> None:
        # dropped before its answer was read: a stream stops; a call's slot frees on completion
        try:
            request = self._request
            if not request.state.final:
                self.router.dropped(request)
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    def __repr__(self) -> str:
        request = self._request
        where = request.replica.actor_name if request.replica is not None else (
            "failed" if request.failure is not None else "waiting")
        return f"<Response {self.router.endpoint}.{request.method_name} -> {where} ({request.state.value})>"
