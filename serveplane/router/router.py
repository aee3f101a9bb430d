"""``EndpointRouter``: one per endpoint per process; the hot path of every request.

It orchestrates parts that own their own state: the ``RouterView`` (config, replicas,
slots, sessions, picking), the ``WaitQueue``, ``decide`` (what a failure means), the
``Batcher`` and shadows; each request's own record is its ``RoutedRequest``, moved only
through its checked transitions, here, under the router's lock.

Invariants:
- one actor call per request (through the ``Transport``); the controller is never on
  the way;
- a replica never has more than ``max_concurrent_queries`` requests from this router;
  when all are full, requests wait in this router's FIFO queue and past
  ``max_queued_requests`` they fail with ``BackPressureError``; the limit holds on every
  path (retries and requests waiting for their arguments too). A freed slot is handed to
  the first waiting request that may use it, under the lock: the request itself records
  it (``ASSIGNED``), so a wake-up, a timer or a cancel racing the hand-over never loses it;
- a replica seen dead leaves this router's set at once; one seen *unavailable* is backed
  off for a short, growing period and never reported dead;
- a request whose replica died or became unavailable may have run: it is retried
  elsewhere (``max_retries``) only when the backend is ``idempotent``; a stream never
  after its first chunk; a request whose *argument* died waits for that argument's retry;
- a replica that refuses a request (full across all routers, or draining) did not run it:
  it goes to another replica (or waits for its own, if pinned), uncounted;
- a cancelled request frees its slot at once; queued, it never reaches a replica;
  running, its call is cancelled (a router-side batch's call only once every request in
  it is cancelled, so no batch-mate is hurt);
- every request that reached a backend is counted once in its figures, whatever its end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from serveplane import tracing
from serveplane.clock import SYSTEM_CLOCK, Clock
from serveplane.exceptions import BackPressureError, EndpointNotFoundError, ReplicaDiedError, RequestCancelledError
from serveplane.records import EndpointInfo, ReplicaInfo, RequestMetadata
from serveplane.router import arguments
from serveplane.router import loop as loops
from serveplane.router.backoff import ReplicaBackoff
from serveplane.router.batcher import Batcher
from serveplane.router.decision import Verdict, decide
from serveplane.router.errors import for_caller
from serveplane.router.figures import describe, load_report, statistics
from serveplane.router.following import ConfigFollower
from serveplane.router.holds import Holds
from serveplane.router.ledger import Ledger, Waiter, set_none, wake
from serveplane.router.request import Outcome, RoutedRequest
from serveplane.router.shadows import fire_shadows
from serveplane.router.state import RequestState
from serveplane.router.stats import RouterStats
from serveplane.router.transport import RAY_TRANSPORT, Failure, Transport
from serveplane.router.view import RouterView

if TYPE_CHECKING:
    from serveplane.router.source import ConfigSource

logger = logging.getLogger(__name__)

class EndpointRouter:
    def __init__(self, endpoint: str, source: ConfigSource, *, transport: Transport = RAY_TRANSPORT,
                 controller_name: str | None = None, namespace: str | None = None,
                 backoff: ReplicaBackoff | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.router_id = f"{endpoint}:{uuid.uuid4().hex[:8]}"
        self.started_at = clock.time()  # wall clock: a rollout window counts a newer router whole
        self.controller_name = controller_name or getattr(source, "controller_name", None)
        self.namespace = namespace or getattr(source, "namespace", None)
        self.transport = transport
        self.stats = RouterStats()
        self.stats_lock = threading.Lock()  # shadow counters, updated on callback threads
        self.view = RouterView(endpoint, clock.monotonic, backoff)
        self.ledger = Ledger(endpoint, self.view, self.stats, clock)
        self.queue = self.ledger.queue
        self.batcher = Batcher(self)
        self._lock = self.lock = threading.Lock()  # the router's parts take it too (batcher, shadows)
        self._request_ids = itertools.count()
        self._holds = Holds(endpoint, self.view, self._lock, self.ledger.wake_all, self.controller_name,
                            self.namespace)
        self._follower = ConfigFollower(endpoint, source, self.view, self._lock, self.ledger.wake_all)
        self._follower.start()

    def next_request_id(self) -> str:
        return f"{self.router_id}:{next(self._request_ids)}"

    @property
    def endpoint_info(self) -> EndpointInfo | None:
        return self.view.info

    @property
    def source(self) -> ConfigSource:
        return self._follower.source

    @property
    def subscriptions(self) -> list[str]:
        """The config keys this router follows."""
        return list(self._follower.subscriptions)

    def close(self) -> None:
        """Stop following config (the router's client shut down)."""
        self._follower.close()

    def _check_exists_locked(self) -> None:
        if self.view.deleted:
            raise EndpointNotFoundError(
                f"endpoint {self.endpoint!r} was deleted; create it again, or call an endpoint "
                "that exists (client.list_endpoints())")

    def _watch(self, requests: list[RoutedRequest]) -> None:
        for request in requests:
            ref = request.ref
            if ref is not None:
                self.transport.on_completed(ref, functools.partial(self._completed, request, ref))

    def _completed(self, request: RoutedRequest, ref: Any, value: Any) -> None:
        """A watched attempt completed (on the transport's callback thread)."""
        if request.ref is not ref:
            return  # an old attempt
        if request.batch is not None:
            value = request.batch.item(value, request.batch_index)
        if isinstance(value, BaseException) and request.replica is not None and \
                self.transport.classify(value, request.replica, request.producers) is not Failure.APPLICATION:
            # retry now, even if nobody reads the answer yet
            loops.background_loop().call_soon_threadsafe(self.on_failure, request, value, ref)
            return
        with self._lock:
            if request.replica is not None and request.holds_slot:
                self.view.backoff.answered(request.replica.actor_name)
            self.ledger.release(request)

    # -- the request path -------------------------------------------------------------------------
    def submit(self, request: RoutedRequest) -> None:
        """Send now if a replica is free; else queue (or refuse with back-pressure)."""
        info = self.view.info
        if info is not None and info.batch_size and not request.stream and not request.deps:
            request.batched = True
            self.batcher.add(request, info.batch_size, info.batch_timeout_s)
            return
        sendable = not request.deps or all(d.ref is not None and not d.batched for d in request.deps)
        with self._lock:
            replica = self.view.pick(request) if sendable else None
            if replica is None:
                self._check_exists_locked()
                self.ledger.reserve(request)
                unwatched = self.ledger.unwatched()
            else:
                self.ledger.claim(request, replica)
        if replica is not None:
            self._send(request)
            return
        self._watch(unwatched)
        request.waiting = loops.start(self._route_waiting(request), f"serveplane-route-{request.request_id}")

    def route_later(self, request: RoutedRequest) -> Any:
        """Route ``request`` (no slot in its batch) on its own, counted against the queue."""
        with self._lock:
            try:
                self.ledger.reserve(request)
            except BackPressureError as error:
                done: concurrent.futures.Future = concurrent.futures.Future()
                done.set_exception(error)
                return done
        return loops.start(self._route_waiting(request), f"serveplane-route-{request.request_id}")

    async def _route_waiting(self, request: RoutedRequest, settle_deps: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            await arguments.settle(request, settle_deps)
            while True:
                with self._lock:
                    if request.state.final:  # cancelled while it waited: awaiters read .failure
                        return
                    if request.state is RequestState.ASSIGNED:
                        break  # a freed slot was handed to it
                    replica = self.view.pick(request)
                    if replica is not None:
                        self.ledger.claim(request, replica)
                        break
                    self._check_exists_locked()  # deleted while it waited: fail now
                    remaining = request.queue_deadline - self.clock.monotonic()
                    if remaining <= 0:
                        self.ledger.expire(request)
                    if request.queued_under is None:
                        self.ledger.reserve(request)  # a retry waits like any request
                    waiter = Waiter(request, loop)
                    self.queue.append(waiter)
                    unwatched = self.ledger.unwatched()
                self._watch(unwatched)
                timer = loop.call_later(remaining, set_none, waiter.future)
                try:
                    await waiter.future
                finally:
                    timer.cancel()
                    with self._lock:
                        self.queue.remove(waiter)
        except BaseException as error:
            with self._lock:
                if isinstance(error, asyncio.CancelledError):
                    self.ledger.release(request)  # the routing itself was cancelled: its canceller ends it
                elif not request.state.final:  # an argument's error is its own
                    self.ledger.end(request, RequestState.FAILED, Outcome.FAILED, error)
            raise
        finally:
            with self._lock:
                self.ledger.unreserve(request)
        self._send(request)

    def _send(self, request: RoutedRequest) -> None:
        """One actor call on the replica ``request`` has claimed."""
        replica = request.replica
        assert replica is not None
        request.attempts += 1
        meta = request.metadata()
        if tracing.ENABLED:
            meta = tracing.route_span(request, self.endpoint, replica, meta)
        try:
            args, kwargs = self._arguments(request)
            if request.stream:
                ref = self.transport.send_stream(replica, meta, args, kwargs)
            else:
                ref = self.transport.send(replica, meta, args, kwargs)
        except BaseException as error:
            with self._lock:
                self.ledger.end(request, RequestState.FAILED, Outcome.FAILED, error)
            raise
        with self._lock:
            if request.state.final:  # cancelled while it was being sent
                self.transport.cancel(ref)
                return
            request.sent(ref)
            unwatched = self.ledger.unwatched() if (self.queue or request.abandoned) and not request.stream \
                else None
        self.stats.requests[replica.backend] += 1
        if unwatched:
            self._watch(unwatched)
        if request.attempts == 1:
            info = self.view.info
            if info is not None and info.shadows:
                fire_shadows(self, request, info.shadows, args, kwargs)

    def _arguments(self, request: RoutedRequest) -> tuple[tuple, dict]:
        if not request.deps:
            return request.args, request.kwargs
        request.producers = tuple(p for p in (d.replica if d.ref is not None else d.previous_replica
                                              for d in request.deps) if p is not None)
        return arguments.resolved(request, self.transport)

    def detach(self, request: RoutedRequest) -> None:
        """The caller took ``request``'s ``ObjectRef`` and reads the answer itself (Ray Serve
        1.x's ``ray.get(handle.remote())``): no retry; when the call completes its slot is
        freed, a replica that died is hidden and shadows are compared."""
        ref = request.ref
        with self._lock:
            if not request.state.final:
                request.end(RequestState.DONE, None)
            request.watched = True
        self.transport.on_completed(ref, functools.partial(self._detached_done, request))

    def _detached_done(self, request: RoutedRequest, value: Any) -> None:
        replica = request.replica
        failure = Failure.APPLICATION
        if isinstance(value, BaseException) and replica is not None:
            failure = self.transport.classify(value, replica, request.producers)
        with self._lock:
            if failure is Failure.REPLICA_DIED and replica is not None:
                self._holds.hide(replica)
            elif failure is Failure.REPLICA_UNAVAILABLE and replica is not None:
                self._holds.back_off(replica)
            elif replica is not None:
                self.view.backoff.answered(replica.actor_name)
            self.ledger.release(request)
            if replica is not None:
                self.stats.outcomes.ended(replica.backend, (
                    Outcome.ANSWERED if failure is Failure.APPLICATION else Outcome.REPLICA_FAILED).value,
                    self.clock.monotonic() - request.started, not isinstance(value, BaseException))
        self.report_to_shadows(request, value)

    def finish(self, request: RoutedRequest) -> None:
        """The caller read the answer: free the slot, once; its backend counts the answer."""
        with self._lock:
            replica = request.replica
            if replica is not None and request.holds_slot:
                view = self.view
                view.backoff.answered(replica.actor_name)
                view.slots.answered(replica.actor_name)
            self.ledger.end(request, RequestState.DONE, Outcome.ANSWERED)

    def streaming(self, request: RoutedRequest) -> None:
        """A stream delivered chunks: from the first on it is never retried."""
        with self._lock:
            request.first_chunk()

    def cancel(self, request: RoutedRequest, error: BaseException | None = None, *,
               timed_out: bool = False) -> bool:
        """Cancel ``request``: queued, it never reaches a replica; running, its call is
        cancelled (a batch's only when all of it is); its slot is free at once. ``error`` is
        what its awaiters get. Returns False if the request was already final."""
        with self._lock:
            failure = error or RequestCancelledError(
                f"request {request.request_id} to endpoint {self.endpoint!r} was cancelled")
            outcome: Outcome | None = Outcome.TIMED_OUT if timed_out else Outcome.CANCELLED
            if request.state is RequestState.QUEUED and timed_out:
                outcome = Outcome.EXPIRED
            if request.ref is None and request.state is not RequestState.ASSIGNED and not request.backend:
                outcome = None  # it never reached a backend
            if not self.ledger.end(request, RequestState.CANCELLED, outcome, failure):
                return False
            self.stats.cancelled += 1
            for waiter in [w for w in self.queue if w.request is request]:
                self.queue.remove(waiter)
                wake(waiter)
            ref, batch = request.ref, request.batch
            if batch is not None and not batch.all_final():
                ref = None  # its batch-mates still want their answers
        if ref is not None:
            self.transport.cancel(ref)
        return True

    def dropped(self, request: RoutedRequest) -> None:
        """Its ``Response`` was dropped unread: a stream is cancelled (its generator stops);
        a unary call still runs, and its slot is freed when the call completes."""
        if request.state.final:
            return
        if request.stream:
            self.cancel(request)
            return
        with self._lock:
            request.abandoned = True
            unwatched = self.ledger.unwatched()
        self._watch(unwatched)

    def on_failure(self, request: RoutedRequest, error: BaseException, failed_ref: Any) -> BaseException | None:
        """Decide what a failed attempt means (``decision.decide``), then act.

        Returns the error the caller gets, or ``None`` when the request goes on (it is being
        re-routed: wait for ``request.waiting``). Safe to call from every awaiter of the same
        request: only the first one that reports an attempt acts on it.
        """
        with self._lock:
            if request.state.final:
                return request.failure or for_caller(error, request)
            if request.ref is not failed_ref:
                return None  # another awaiter already re-routed this attempt
            replica = request.replica
            assert replica is not None
            kind = self.transport.classify(error, replica, request.producers)
            config = self.view.config(replica.backend)
            decision = decide(kind, idempotent=config.idempotent, retries_done=request.attempts - 1,
                              max_retries=config.max_retries, has_deps=bool(request.deps),
                              chunks_delivered=request.chunks,
                              deps_final=all(d.state.final for d in request.deps))
            if decision.verdict is Verdict.ANSWER:
                if request.holds_slot:
                    self.view.backoff.answered(replica.actor_name)  # it ran the user's code
                    self.view.slots.answered(replica.actor_name)
                failure = for_caller(error, request)
                self.ledger.end(request, RequestState.DONE, Outcome.ANSWERED, failure, ok=False)
                return failure
            self.ledger.release(request, hand_over=kind is Failure.DEPENDENCY_DIED)
            if kind is Failure.REPLICA_DIED:
                self._holds.hide(replica)
            elif kind is Failure.REPLICA_UNAVAILABLE:
                self._holds.back_off(replica)
            elif kind is Failure.REPLICA_FULL:
                self._holds.refused(replica)
            if decision.verdict is Verdict.FAIL:
                if kind is Failure.DEPENDENCY_DIED:
                    self.ledger.end(request, RequestState.FAILED, Outcome.FAILED, error)
                    return error
                what = "died" if kind is Failure.REPLICA_DIED else "became unreachable"
                failure = ReplicaDiedError(
                    f"replica {replica.actor_name} {what} while running a request of endpoint "
                    f"{self.endpoint!r}; not retried because {decision.why}")
                failure.__cause__ = error
                self.ledger.end(request, RequestState.FAILED, Outcome.REPLICA_FAILED, failure)
                return failure
            if decision.verdict is Verdict.TRY_ELSEWHERE:
                request.attempts -= 1  # it never ran there: not a retry
                self.stats.refused += 1
            elif decision.verdict is Verdict.RESEND:
                request.attempts -= 1  # it never ran: not against max_retries (its argument's own are)
                self.stats.retries += 1
            else:
                self.stats.retries += 1
            placeholder: concurrent.futures.Future = concurrent.futures.Future()
            request.retry(failed_ref, placeholder)
        routing = loops.start(self._route_waiting(request, settle_deps=kind is Failure.DEPENDENCY_DIED),
                              f"serveplane-retry-{request.request_id}")
        routing.add_done_callback(lambda done: loops.copy_outcome(done, placeholder))
        return None

    def mark_dead(self, replica: ReplicaInfo) -> None:
        with self._lock:
            self._holds.hide(replica)

    def back_off(self, replica: ReplicaInfo) -> None:
        """``replica`` was unreachable: skip it for a while (it may come back)."""
        with self._lock:
            self._holds.back_off(replica)

    # -- used by the batcher and shadows --------------------------------------------------------
    def fail(self, request: RoutedRequest, error: BaseException) -> None:
        """``request`` failed before it ran (its send raised): free its slot."""
        with self._lock:
            self.ledger.end(request, RequestState.FAILED, Outcome.FAILED, error)

    def report_to_shadows(self, request: RoutedRequest, outcome: Any) -> None:
        shadows, request.shadows = request.shadows, []
        for shadow in shadows:
            shadow.on_primary(outcome)

    # -- fanout ---------------------------------------------------------------------------------
    def fanout_targets(self) -> list[ReplicaInfo]:
        """Every live replica of the backends that currently get traffic."""
        with self._lock:
            return self.view.fanout_targets()

    def send_direct(self, replica: ReplicaInfo, method_name: str, args: tuple, kwargs: dict,
                    http: bool = False) -> Any:
        meta = RequestMetadata(self.next_request_id(), self.endpoint, method_name, http=http)
        return self.transport.send(replica, meta, args, kwargs)

    def forget_session(self, session_id: str) -> None:
        with self._lock:
            self.view.sessions.pop(session_id, None)

    # -- introspection (figures.py) ---------------------------------------------------------------
    def load_report(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return load_report(self)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return statistics(self)

    def __repr__(self) -> str:
        return describe(self.statistics())
