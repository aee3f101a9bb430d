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
from typing import TYPE_CHECKING, Any, NoReturn

from serveplane import tracing
from serveplane.clock import SYSTEM_CLOCK, Clock
from serveplane.exceptions import (
    BackPressureError,
    EndpointNotFoundError,
    NoReplicasError,
    ReplicaDiedError,
    RequestCancelledError,
)
from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, RequestMetadata, keys
from serveplane.router import loop as loops
from serveplane.router.backoff import ReplicaBackoff
from serveplane.router.batcher import Batcher, BatchCall
from serveplane.router.decision import Verdict, decide
from serveplane.router.errors import for_caller
from serveplane.router.figures import load_report, statistics
from serveplane.router.reporter import report_replica_died
from serveplane.router.request import Outcome, RoutedRequest
from serveplane.router.shadows import fire_shadows
from serveplane.router.state import RequestState
from serveplane.router.stats import RouterStats
from serveplane.router.transport import RAY_TRANSPORT, Failure, Transport
from serveplane.router.view import RouterView
from serveplane.router.waitqueue import WaitQueue

if TYPE_CHECKING:
    from serveplane.router.source import ConfigSource

logger = logging.getLogger(__name__)

UNKNOWN_BACKEND = ""  # queue key of requests that wait for the endpoint's config
BACKOFF_WAKE_MIN_S = 0.001


class _Waiter:
    """A queued request and the future its routing coroutine sleeps on (a wake-up only:
    what it got is in the request's own state)."""

    __slots__ = ("request", "loop", "future")

    def __init__(self, request: RoutedRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()


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
        self.queue: WaitQueue[_Waiter] = WaitQueue()
        self.batcher = Batcher(self)
        self._source = source
        self._lock = threading.Lock()
        self._request_ids = itertools.count()
        self._backoff_end_pending = False  # a timer will wake the queue when a hold ends
        self._running: dict[RoutedRequest, None] = {}  # requests holding a slot (insertion order)
        self._subscriptions: dict[str, Any] = {}
        self._subscribe(keys.endpoint(endpoint), self._on_endpoint)

    def next_request_id(self) -> str:
        return f"{self.router_id}:{next(self._request_ids)}"

    @property
    def endpoint_info(self) -> EndpointInfo | None:
        return self.view.info

    @property
    def source(self) -> ConfigSource:
        return self._source

    # -- config updates (any thread) ----------------------------------------------------------
    def _subscribe(self, key: str, callback: Any) -> None:
        if key not in self._subscriptions:
            self._subscriptions[key] = None  # reserved before a synchronous first callback
            self._subscriptions[key] = self._source.subscribe(key, callback)

    def _on_endpoint(self, info: EndpointInfo | None) -> None:
        policy = self.view.policy_for(info) if info is not None else None  # user code: unlocked
        with self._lock:
            used = self.view.set_endpoint(info, policy)
            self._wake_all_locked()
        if info is None:
            return
        for backend in sorted(used):
            self._subscribe(keys.replicas(backend), functools.partial(self._on_replicas, backend))
            self._subscribe(keys.backend_config(backend), functools.partial(self._on_config, backend))
        for key in [k for k in self._subscriptions if k != keys.endpoint(self.endpoint)
                    and k.split(":", 1)[1] not in used]:
            token = self._subscriptions.pop(key)  # a backend that left the endpoint
            if token is not None:
                self._source.unsubscribe(token)

    def _on_replicas(self, backend: str, replicas: tuple[ReplicaInfo, ...] | None) -> None:
        with self._lock:
            if self.view.info is not None and backend not in self.view.info.traffic \
                    and backend not in self.view.info.shadows:
                return  # a late update of a backend the endpoint no longer uses
            self.view.set_replicas(backend, tuple(replicas or ()))
            self._wake_all_locked()

    def _on_config(self, backend: str, info: BackendInfo | None) -> None:
        with self._lock:
            self.view.set_config(backend, info.config if info is not None else None)
            self._wake_all_locked()

    def close(self) -> None:
        """Stop following config (the router's client shut down)."""
        for token in self._subscriptions.values():
            if token is not None:
                self._source.unsubscribe(token)
        self._subscriptions.clear()

    # -- slots and the queue (under the lock) --------------------------------------------------
    def _claim_locked(self, request: RoutedRequest, replica: ReplicaInfo) -> None:
        self.view.slots.claim(replica.actor_name)
        request.assign(replica)
        self._running[request] = None

    def _release_locked(self, request: RoutedRequest, hand_over: bool = True) -> None:
        """Free ``request``'s slot, once; hand it to the first queued request that fits."""
        replica = request.give_back_slot()
        if replica is None:
            return
        self._running.pop(request, None)
        self.view.slots.release(replica.actor_name)
        if hand_over and self.queue and self.view.free_slot_taker_allowed(replica):
            view = self.view
            waiter = self.queue.take_first(
                lambda w: w.request.state is RequestState.QUEUED and view.fits(w.request, replica))
            if waiter is not None:
                self._claim_locked(waiter.request, replica)
                _wake(waiter)

    def _wake_all_locked(self) -> None:
        """Replicas, config or traffic changed: every queued request looks again."""
        for waiter in self.queue.take_all():
            _wake(waiter)

    def _end_locked(self, request: RoutedRequest, state: RequestState, outcome: Outcome | None,
                    failure: BaseException | None = None, ok: bool = True) -> bool:
        """``request`` is final; its backend's figures count it (once)."""
        if not request.end(state, outcome, failure):
            return False
        self._release_locked(request)
        backend = request.backend
        if outcome is not None and backend is not None:
            latency = self.clock.monotonic() - request.started
            if outcome is Outcome.ANSWERED:
                self.stats.outcomes.answered(backend, latency, ok)
            else:
                self.stats.outcomes.ended(backend, outcome.value, latency, ok)
        return True

    def _check_exists_locked(self) -> None:
        if self.view.deleted:
            raise EndpointNotFoundError(
                f"endpoint {self.endpoint!r} was deleted; create it again, or call an endpoint "
                "that exists (client.list_endpoints())")

    def _reserve_locked(self, request: RoutedRequest) -> None:
        """Count ``request`` against its backend's ``max_queued_requests``, or refuse it."""
        backend = request.backend or UNKNOWN_BACKEND
        if backend not in self.view.configs or backend not in self.view.replicas:
            backend = UNKNOWN_BACKEND  # waiting to hear of the backend, not for its capacity
        limit = self.view.config(backend).max_queued_requests
        if not self.queue.reserve(backend, limit):
            self.stats.back_pressure_rejections += 1
            retried = " (it was going again: its last replica failed or refused it)" \
                if request.previous_replica is not None else ""
            error = BackPressureError(
                f"endpoint {self.endpoint!r} has {self.queue.count(backend)} requests queued for "
                f"backend {backend or '(not yet known)'!r}, the limit (max_queued_requests) is "
                f"{limit}{retried}; every replica is at max_concurrent_queries: retry later or add replicas")
            self._end_locked(request, RequestState.FAILED, Outcome.REFUSED, error)
            raise error
        request.queue(backend)

    def _unwatched_locked(self) -> list[RoutedRequest]:
        """Requests in flight whose completion nobody may look at soon.

        A slot is normally freed when the caller reads the answer (no extra callback per
        request). Once requests queue, a slot must not wait for a caller that reads later
        (or never): every unary request in flight then gets a completion callback that
        frees its slot. A stream frees its slot when it ends, is cancelled or is dropped.
        """
        everyone = bool(self.queue)
        todo = [r for r in self._running if not r.watched and r.ref is not None and not r.stream
                and (everyone or r.abandoned)]
        for request in todo:
            request.watched = True
        return todo

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
            self._release_locked(request)

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
                self._reserve_locked(request)
                unwatched = self._unwatched_locked()
            else:
                self._claim_locked(request, replica)
        if replica is not None:
            self._send(request)
            return
        self._watch(unwatched)
        request.waiting = loops.start(self._route_waiting(request), f"serveplane-route-{request.request_id}")

    def route_later(self, request: RoutedRequest) -> Any:
        """Route ``request`` (no slot in its batch) on its own, counted against the queue."""
        with self._lock:
            try:
                self._reserve_locked(request)
            except BackPressureError as error:
                done: concurrent.futures.Future = concurrent.futures.Future()
                done.set_exception(error)
                return done
        return loops.start(self._route_waiting(request), f"serveplane-route-{request.request_id}")

    async def _route_waiting(self, request: RoutedRequest, settle_deps: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._settle_deps(request, settle_deps)
            while True:
                with self._lock:
                    if request.state.final:  # cancelled while it waited: awaiters read .failure
                        return
                    if request.state is RequestState.ASSIGNED:
                        break  # a freed slot was handed to it
                    replica = self.view.pick(request)
                    if replica is not None:
                        self._claim_locked(request, replica)
                        break
                    self._check_exists_locked()  # deleted while it waited: fail now
                    remaining = request.queue_deadline - self.clock.monotonic()
                    if remaining <= 0:
                        self._expire_locked(request)
                    if request.queued_under is None:
                        self._reserve_locked(request)  # a retry waits like any request
                    waiter = _Waiter(request, loop)
                    self.queue.append(waiter)
                    unwatched = self._unwatched_locked()
                self._watch(unwatched)
                timer = loop.call_later(remaining, _set_none, waiter.future)
                try:
                    await waiter.future
                finally:
                    timer.cancel()
                    with self._lock:
                        self.queue.remove(waiter)
        except BaseException as error:
            with self._lock:
                if isinstance(error, asyncio.CancelledError):
                    self._release_locked(request)  # the routing itself was cancelled: its canceller ends it
                elif not request.state.final:  # an argument's error is its own
                    self._end_locked(request, RequestState.FAILED, Outcome.FAILED, error)
            raise
        finally:
            with self._lock:
                backend = request.unreserve()
                if backend is not None:
                    self.queue.unreserve(backend)
        self._send(request)

    async def _settle_deps(self, request: RoutedRequest, settle: bool) -> None:
        """Wait until every ``Response`` argument is sent; with ``settle`` (an argument's
        producer died) or for a router-side batch's answer (its ref holds every caller's
        answer), until it is final: its own value is then passed on. Its error is ours."""
        for dep in _responses_in(request.args, request.kwargs):
            if dep.request.batched:
                request.settled[id(dep)] = await dep  # put in the object store once
            elif settle:
                await dep  # its final attempt's ref is passed on, not the value
            else:
                await dep.routed()

    def _expire_locked(self, request: RoutedRequest) -> NoReturn:
        """Its deadline passed while it waited for a slot: it fails and never runs."""
        what = "deadline" if request.deadline is not None else "queue timeout"
        error = NoReplicasError(
            f"no replica of endpoint {self.endpoint!r} (backend {request.backend or '(not yet known)'!r}) "
            f"had a free slot within {request.queue_timeout_s:.3g}s ({what}); it never ran: check that the "
            "backend has running replicas, or raise timeout_s")
        self._end_locked(request, RequestState.FAILED, Outcome.EXPIRED, error)
        raise error

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
                self._end_locked(request, RequestState.FAILED, Outcome.FAILED, error)
            raise
        with self._lock:
            if request.state.final:  # cancelled while it was being sent
                self.transport.cancel(ref)
                return
            request.sent(ref)
            unwatched = self._unwatched_locked() if (self.queue or request.abandoned) and not request.stream \
                else None
        self.stats.requests[replica.backend] += 1
        if unwatched:
            self._watch(unwatched)
        if request.attempts == 1:
            info = self.view.info
            if info is not None and info.shadows:
                fire_shadows(self, request, info.shadows, args, kwargs)

    def _arguments(self, request: RoutedRequest) -> tuple[tuple, dict]:
        """``Response`` arguments become the refs of their current attempts (a batched one,
        its own answer put in the object store): values go replica to replica."""
        if not request.deps:
            return request.args, request.kwargs
        request.producers = tuple(p for p in (d.replica if d.ref is not None else d.previous_replica
                                              for d in request.deps) if p is not None)
        return _resolved(request.args, request, self.transport), {
            k: _resolved((v,), request, self.transport)[0] for k, v in request.kwargs.items()}

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
                self._hide_locked(replica)
            elif failure is Failure.REPLICA_UNAVAILABLE and replica is not None:
                self._back_off_locked(replica)
            elif replica is not None:
                self.view.backoff.answered(replica.actor_name)
            self._release_locked(request)
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
            self._end_locked(request, RequestState.DONE, Outcome.ANSWERED)

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
            if not self._end_locked(request, RequestState.CANCELLED, outcome, failure):
                return False
            self.stats.cancelled += 1
            for waiter in [w for w in self.queue if w.request is request]:
                self.queue.remove(waiter)
                _wake(waiter)
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
            unwatched = self._unwatched_locked()
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
                self._end_locked(request, RequestState.DONE, Outcome.ANSWERED, failure, ok=False)
                return failure
            self._release_locked(request, hand_over=kind is Failure.DEPENDENCY_DIED)
            if kind is Failure.REPLICA_DIED:
                self._hide_locked(replica)
            elif kind is Failure.REPLICA_UNAVAILABLE:
                self._back_off_locked(replica)
            elif kind is Failure.REPLICA_FULL:
                self.view.slots.refused(replica.actor_name)
                self.view.changed()
                self._schedule_backoff_end_locked()
            if decision.verdict is Verdict.FAIL:
                if kind is Failure.DEPENDENCY_DIED:
                    self._end_locked(request, RequestState.FAILED, Outcome.FAILED, error)
                    return error
                what = "died" if kind is Failure.REPLICA_DIED else "became unreachable"
                failure = ReplicaDiedError(
                    f"replica {replica.actor_name} {what} while running a request of endpoint "
                    f"{self.endpoint!r}; not retried because {decision.why}")
                failure.__cause__ = error
                self._end_locked(request, RequestState.FAILED, Outcome.REPLICA_FAILED, failure)
                return failure
            if decision.verdict is Verdict.TRY_ELSEWHERE:
                request.attempts -= 1  # it never ran there: not a retry
                self.stats.refused += 1
            elif decision.verdict is Verdict.RESEND:
                request.attempts -= 1  # it never ran: its argument is recomputed first
            else:
                self.stats.retries += 1
            placeholder: concurrent.futures.Future = concurrent.futures.Future()
            request.retry(failed_ref, placeholder)
        routing = loops.start(self._route_waiting(request, settle_deps=kind is Failure.DEPENDENCY_DIED),
                              f"serveplane-retry-{request.request_id}")
        routing.add_done_callback(lambda done: loops.copy_outcome(done, placeholder))
        return None

    def _hide_locked(self, replica: ReplicaInfo) -> None:
        if self.view.mark_dead(replica):
            logger.info("replica %s of endpoint %r died; routing around it", replica.actor_name, self.endpoint)
            if self.controller_name is not None:
                report_replica_died(self.controller_name, self.namespace, replica.backend, replica.actor_name)
        self._wake_all_locked()

    def mark_dead(self, replica: ReplicaInfo) -> None:
        with self._lock:
            self._hide_locked(replica)

    def back_off(self, replica: ReplicaInfo) -> None:
        """``replica`` was unreachable: skip it for a while (it may come back)."""
        with self._lock:
            self._back_off_locked(replica)

    def _back_off_locked(self, replica: ReplicaInfo) -> None:
        period = self.view.backoff.unavailable(replica.actor_name)
        self.view.changed()
        logger.info("replica %s of endpoint %r is unreachable; skipping it for %.2fs",
                    replica.actor_name, self.endpoint, period)
        self._schedule_backoff_end_locked()

    def _schedule_backoff_end_locked(self) -> None:
        """Wake the queue when the first backoff period ends (queued requests may use it)."""
        view = self.view
        ends = [t for t in (view.backoff.next_end_in(), view.slots.full.next_end_in()) if t is not None]
        if not ends or self._backoff_end_pending:
            return
        self._backoff_end_pending = True
        loop = loops.background_loop()
        # at least 1 ms: a period that ends below the clock's resolution must not spin
        loop.call_soon_threadsafe(loop.call_later, max(min(ends), BACKOFF_WAKE_MIN_S), self._on_backoff_end)

    def _on_backoff_end(self) -> None:
        with self._lock:
            self._backoff_end_pending = False
            self.view.changed()
            self._wake_all_locked()
            self._schedule_backoff_end_locked()  # the next period (or this one, if the timer ran early)

    # -- used by the batcher and shadows --------------------------------------------------------
    def claim_for_batch(self, batch: list[RoutedRequest]) -> tuple[
            list[tuple[ReplicaInfo, list[RoutedRequest]]], list[RoutedRequest]]:
        """Slots for a gathered batch, each request picked on its own: the requests grouped
        by replica, and those that must wait (those cancelled meanwhile are left out)."""
        groups: dict[str, tuple[ReplicaInfo, list[RoutedRequest]]] = {}
        waiting = []
        with self._lock:
            for request in batch:
                if request.state.final:
                    continue
                replica = self.view.pick(request)
                if replica is None:
                    waiting.append(request)
                else:
                    self._claim_locked(request, replica)
                    groups.setdefault(replica.actor_name, (replica, []))[1].append(request)
        return list(groups.values()), waiting

    def sent_batch(self, batch: list[RoutedRequest], ref: Any) -> None:
        """The requests of ``batch`` are running as one call (``ref`` answers them all)."""
        call = BatchCall(ref, batch)
        with self._lock:
            for index, request in enumerate(batch):
                request.batch_index = index
                request.batch = call
                request.attempts = 1
                if not request.state.final:  # one cancelled while it was sent: slot freed already
                    request.sent(ref)
            cancel = call.all_final()
        if cancel:
            self.transport.cancel(ref)

    def fail(self, request: RoutedRequest, error: BaseException) -> None:
        """``request`` failed before it ran (its send raised): free its slot."""
        with self._lock:
            self._end_locked(request, RequestState.FAILED, Outcome.FAILED, error)

    def release(self, request: RoutedRequest) -> None:
        with self._lock:
            self._release_locked(request)

    def claim_for_shadow(self, backend: str) -> ReplicaInfo | None:
        """The least loaded replica of ``backend`` with a free slot, claimed; shadows never wait."""
        with self._lock:
            replica = self.view.shadow_replica(backend)
            if replica is not None:
                self.view.slots.claim(replica.actor_name)
            return replica

    def release_shadow(self, replica: ReplicaInfo) -> None:
        with self._lock:
            self.view.slots.release(replica.actor_name)
            if self.queue:
                self._wake_all_locked()

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
        s = self.statistics()
        backends = " ".join(f"{b}={w:g}" for b, w in sorted(s["traffic"].items())) or "(no config)"
        running = sum(len(v) for v in s["replicas"].values())
        backed_off = f", {len(s['backed_off_replicas'])} backed off" if s["backed_off_replicas"] else ""
        return (f"<Router {self.endpoint} [backends: {backends} | replicas: {running} running{backed_off} | "
                f"in flight: {s['in_flight']} | queued: {s['queued']}]>")


def _wake(waiter: _Waiter) -> None:
    try:
        waiter.loop.call_soon_threadsafe(_set_none, waiter.future)
    except RuntimeError:
        pass  # that loop is closed: its waiter is gone with it


def _set_none(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _responses_in(args: tuple, kwargs: dict) -> list[Any]:
    from serveplane.router.response import Response  # the caller's side; no import at load

    return [v for v in (*args, *kwargs.values()) if isinstance(v, Response)]


def _resolved(values: tuple, request: RoutedRequest, transport: Transport) -> tuple:
    """Responses among ``values`` become the refs of their current attempts, or their
    settled answers put in the object store."""
    from serveplane.router.response import Response

    out = []
    for value in values:
        if isinstance(value, Response):
            settled = request.settled.get(id(value), _UNSET)
            value = transport.put(settled) if settled is not _UNSET else value.argument_ref()
        out.append(value)
    return tuple(out)


_UNSET = object()
