"""``EndpointRouter``: one per endpoint per process; the hot path of every request.

Invariants:
- one actor call per request (through the ``Transport``); the controller is never on
  the way;
- a replica never has more than ``max_concurrent_queries`` requests from this router;
  when all are full, requests wait in this router's FIFO queue (bound to no replica) and
  past ``max_queued_requests`` they fail at once with ``BackPressureError``. A freed slot
  is handed to the first waiting request that may use it, under the lock, so a new
  request never overtakes a queued one;
- a replica seen dead leaves this router's set at once, and a later update that still
  lists it does not bring it back; a replica seen *unavailable* (unreachable for now) is
  only backed off for a short, growing period (``ReplicaBackoff``) and never reported dead;
- a request whose replica died or became unavailable may have run: it is retried
  elsewhere (``max_retries``) only when the backend is ``idempotent``; a request whose
  *argument* died (a ``Response`` passed in) did not run: it waits for that argument's own
  retry and is sent again with the final ``ObjectRef``;
- shadows are fired without waiting and never change or delay the primary answer;
- a replica that refuses a request (``ReplicaFullError``: full across all routers, or
  draining) did not run it: the request goes to another replica (or waits), uncounted;
- a cancelled request frees its slot at once; queued, it never reaches a replica; running,
  its replica's call is cancelled;
- a request with a deadline never starts after it (queued past it: ``NoReplicasError``,
  a ``RequestTimeoutError``) and is cancelled when it passes while running.

The parts are pure and tested without Ray: ``SlotTable`` (slots per replica, refusals),
``WaitQueue`` (FIFO waiters, per-backend counts), ``decide`` (what a failure means) and
``RequestState`` (each request's one state machine, moved only here, under the lock);
the ``Transport`` makes the Ray calls.

Config arrives through a ``ConfigSource`` on any thread; callbacks swap whole immutable
values under a short lock. Picking is synchronous and runs on the caller's thread; only
waiting is async (on the caller's loop, or on the background loop for sync callers).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import logging
import random
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any, NoReturn

from serveplane import tracing
from serveplane.clock import SYSTEM_CLOCK, Clock
from serveplane.config import BackendConfig
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
from serveplane.router.policies import (
    NO_REQUEST,
    RequestInfo,
    Router,
    key_fraction,
    make_policy,
    rendezvous_pick,
    weighted_pick,
)
from serveplane.router.batcher import Batcher
from serveplane.router.decision import Verdict, decide
from serveplane.router.slots import SlotTable
from serveplane.router.state import RequestState, check
from serveplane.router.waitqueue import WaitQueue
from serveplane.router.reporter import report_replica_died
from serveplane.router.shadows import fire_shadows
from serveplane.router.stats import RouterStats
from serveplane.router.transport import RAY_TRANSPORT, Failure, Transport

from serveplane.router.response import BatchCall

if TYPE_CHECKING:
    from serveplane.router.response import Response
    from serveplane.router.source import ConfigSource

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = BackendConfig()
MAX_TRACKED_SESSIONS = 100_000
UNKNOWN_BACKEND = ""  # queue key of requests that wait for the endpoint's config
UNBOUNDED = 2**62  # the queue limit of requests already admitted once (retries, arguments)


class _Waiter:
    """A queued request and the future its routing coroutine sleeps on.

    The future gets a ``ReplicaInfo`` whose slot is already taken for the request (a
    hand-over), or ``None``: "something changed, look again".
    """

    __slots__ = ("request", "loop", "future")

    def __init__(self, request: Response, loop: asyncio.AbstractEventLoop) -> None:
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
        self._source = source
        self._lock = threading.Lock()
        self._request_ids = itertools.count()
        self._info: EndpointInfo | None = None
        self._deleted = False  # the controller published this endpoint as gone
        self._only_backend: str | None = None  # the one backend with weight > 0, if so
        self._policy: Router = make_policy("round_robin")
        self._policy_key: tuple[str, bytes | None] = ("round_robin", None)
        self._replicas: dict[str, tuple[ReplicaInfo, ...]] = {}
        self._configs: dict[str, BackendConfig] = {}
        self._slots = SlotTable(clock.monotonic)
        self._dead: set[str] = set()
        self._backoff = backoff if backoff is not None else ReplicaBackoff(clock=clock.monotonic)
        self._backoff_end_pending = False  # a timer will wake the queue when a hold ends
        self._live_cache: dict[str, list[ReplicaInfo]] = {}
        self._queue: WaitQueue[_Waiter] = WaitQueue()
        self._sessions: collections.OrderedDict[str, str] = collections.OrderedDict()
        # requests holding a slot; weak, so one dropped unread is freed by its __del__
        self._running: weakref.WeakSet[Response] = weakref.WeakSet()
        self._batcher = Batcher(self)
        self._subscriptions: dict[str, Any] = {}
        self._policy.load = self._load
        self._subscribe(keys.endpoint(endpoint), self._on_endpoint)

    def next_request_id(self) -> str:
        return f"{self.router_id}:{next(self._request_ids)}"

    @property
    def endpoint_info(self) -> EndpointInfo | None:
        return self._info

    @property
    def source(self) -> ConfigSource:
        return self._source

    # -- config updates (any thread) ----------------------------------------------------
    def _subscribe(self, key: str, callback: Any) -> None:
        if key not in self._subscriptions:
            self._subscriptions[key] = None  # reserved before a synchronous first callback
            self._subscriptions[key] = self._source.subscribe(key, callback)

    def _on_endpoint(self, info: EndpointInfo | None) -> None:
        policy = None
        if info is not None and (info.router, info.router_blob) != self._policy_key:
            policy = make_policy(info.router, info.router_blob)  # user code: outside the lock
            policy.load = self._load
        with self._lock:
            self._info = info
            self._deleted = info is None  # a value of None is published only for a deleted endpoint
            weighted = [b for b, w in info.traffic.items() if w > 0] if info is not None else []
            self._only_backend = weighted[0] if len(weighted) == 1 else None
            if info is not None and policy is not None:
                self._policy = policy
                self._policy_key = (info.router, info.router_blob)
            self._wake_all_locked()
        if info is not None:
            for backend in sorted(set(info.traffic) | set(info.shadows)):
                self._subscribe(keys.replicas(backend), self._replicas_callback(backend))
                self._subscribe(keys.backend_config(backend), self._config_callback(backend))

    def _replicas_callback(self, backend: str) -> Any:
        def on_replicas(replicas: tuple[ReplicaInfo, ...] | None) -> None:
            replicas = tuple(replicas or ())
            with self._lock:
                listed = {r.actor_name for b, rs in self._replicas.items() if b != backend for r in rs}
                listed.update(r.actor_name for r in replicas)
                self._dead &= listed  # forget the dead the controller dropped; hide the others
                self._backoff.keep_only(listed)
                self._slots.keep_only(listed)
                self._replicas[backend] = replicas
                self._live_cache.clear()
                self._wake_all_locked()
        return on_replicas

    def _config_callback(self, backend: str) -> Any:
        def on_config(info: BackendInfo | None) -> None:
            with self._lock:
                if info is None:
                    self._configs.pop(backend, None)
                else:
                    self._configs[backend] = info.config
                self._wake_all_locked()
        return on_config

    def close(self) -> None:
        """Stop following config (the router's client shut down)."""
        for token in self._subscriptions.values():
            if token is not None:
                self._source.unsubscribe(token)
        self._subscriptions.clear()

    # -- picking (under the lock) -----------------------------------------------------------
    def _load(self, replica: ReplicaInfo) -> int:
        return self._slots.load(replica.actor_name)

    def _config(self, backend: str) -> BackendConfig:
        return self._configs.get(backend, DEFAULT_CONFIG)

    def _live(self, backend: str) -> list[ReplicaInfo]:
        live = self._live_cache.get(backend)
        if live is None:
            dead = self._dead
            backed_off = self._backoff.blocked() | self._slots.full.blocked()
            live = [r for r in self._replicas.get(backend, ()) if r.actor_name not in dead
                    and r.actor_name not in backed_off]
            if not backed_off:  # a hold ends with time: not cached while one runs
                self._live_cache[backend] = live
        return live

    def _backend_for(self, request: Response) -> str | None:
        if request.backend is None:
            if self._only_backend is not None:
                request.backend = self._only_backend
                return request.backend
            info = self._info
            if info is None or not info.traffic:
                return None
            key = request.session_id or request.shard_key
            request.backend = weighted_pick(info.traffic,
                                            key_fraction(key) if key is not None else random.random())
        return request.backend

    def _pinned(self, request: Response, replicas: list[ReplicaInfo]) -> ReplicaInfo | None:
        """The one replica a keyed request must use (sessions; shard keys under consistent_hash)."""
        if request.session_id is not None:
            return rendezvous_pick(request.session_id, replicas)
        if request.shard_key is not None and self._policy.hashes_keys:
            return rendezvous_pick(request.shard_key, replicas)
        return None

    def _try_pick(self, request: Response) -> ReplicaInfo | None:
        """Claim a slot on a replica for ``request``, or ``None`` if it must wait."""
        backend = request.backend or self._backend_for(request)
        if backend is None:
            return None
        replicas = self._live_cache.get(backend)
        if replicas is None:
            replicas = self._live(backend)
        if not replicas:
            return None
        config = self._configs.get(backend)
        if config is None:
            return None  # its max_concurrent_queries is not known yet: wait for the config
        limit = config.max_concurrent_queries
        slots = self._slots
        chosen = None
        if request.session_id is not None or request.shard_key is not None:
            chosen = self._pinned(request, replicas)
        if chosen is not None:
            if not slots.has_room(chosen.actor_name, limit):
                return None
            if request.session_id is not None:
                self._track_session(request.session_id, chosen)
        else:
            free = [r for r in replicas if slots.has_room(r.actor_name, limit)]
            if not free:
                return None
            policy = self._policy
            chosen = free[0] if len(free) == 1 else policy.choose(
                free, self._request_info(request) if policy.uses_request else NO_REQUEST)
        self._claim_locked(request, chosen)
        return chosen

    def _claim_locked(self, request: Response, replica: ReplicaInfo) -> None:
        self._slots.claim(replica.actor_name)
        self._move(request, RequestState.ASSIGNED)
        request.replica = replica
        request.released = False
        request.watched = False
        self._running.add(request)

    @staticmethod
    def _move(request: Response, state: RequestState) -> None:
        """The one place a request changes state (under the lock)."""
        check(request.state, state)
        request.state = state

    def _request_info(self, request: Response) -> RequestInfo:
        return RequestInfo(self.endpoint, request.method_name, request.session_id or request.shard_key,
                           request.args)

    def _track_session(self, session_id: str, replica: ReplicaInfo) -> None:
        previous = self._sessions.get(session_id)
        if previous != replica.actor_name:
            if previous is not None:
                self.stats.session_moves += 1
            self._sessions[session_id] = replica.actor_name
        self._sessions.move_to_end(session_id)
        if len(self._sessions) > MAX_TRACKED_SESSIONS:
            self._sessions.popitem(last=False)

    def _fits(self, request: Response, replica: ReplicaInfo) -> bool:
        """May ``request`` (queued) take a freed slot of ``replica``?"""
        if self._backend_for(request) != replica.backend:
            return False
        if request.session_id is not None or request.shard_key is not None:
            pinned = self._pinned(request, self._live(replica.backend))
            if pinned is not None and pinned.actor_name != replica.actor_name:
                return False
        if request.session_id is not None:
            self._track_session(request.session_id, replica)
        return True

    # -- slots and the queue (under the lock) ----------------------------------------------------
    def _release_locked(self, request: Response, hand_over: bool = True) -> None:
        """Free ``request``'s slot, once."""
        replica = request.replica
        if request.released or replica is None:
            return
        request.released = True
        self._running.discard(request)
        if hand_over:
            self._free_slot_locked(replica)
        else:
            self._slots.release(replica.actor_name)

    def _free_slot_locked(self, replica: ReplicaInfo) -> None:
        """One slot of ``replica`` is free: hand it to the first queued request that may use it."""
        name = replica.actor_name
        self._slots.release(name)
        if not self._queue or name in self._dead:
            return
        if not self._slots.has_room(name, self._config(replica.backend).max_concurrent_queries):
            return  # the limit went down meanwhile
        if not any(r.actor_name == name for r in self._live(replica.backend)):
            return
        # a waiter whose future is done timed out or was cancelled; its coroutine removes it
        waiter = self._queue.take_first(
            lambda w: not w.future.done() and self._fits(w.request, replica))
        if waiter is not None:
            self._claim_locked(waiter.request, replica)
            _call_soon(waiter.loop, self._hand_over, waiter, replica)

    def _hand_over(self, waiter: _Waiter, replica: ReplicaInfo | None) -> None:
        """On the waiter's loop. A slot that arrives too late goes back (to the next one)."""
        if not waiter.future.done():
            waiter.future.set_result(replica)
        elif replica is not None:
            with self._lock:
                self._release_locked(waiter.request)

    def _wake_all_locked(self) -> None:
        """Replicas, config or traffic changed: every queued request looks again."""
        for waiter in self._queue.take_all():
            _call_soon(waiter.loop, self._hand_over, waiter, None)

    def _check_exists_locked(self) -> None:
        if self._deleted:
            raise EndpointNotFoundError(
                f"endpoint {self.endpoint!r} was deleted; create it again, or call an endpoint "
                "that exists (client.list_endpoints())")

    def _reserve_queue_slot(self, request: Response) -> None:
        backend = request.backend or UNKNOWN_BACKEND
        if backend not in self._configs or backend not in self._replicas:
            backend = UNKNOWN_BACKEND  # waiting to hear of the backend, not for its capacity
        limit = self._config(backend).max_queued_requests
        if not self._queue.reserve(backend, limit):
            self.stats.back_pressure_rejections += 1
            raise BackPressureError(
                f"endpoint {self.endpoint!r} has {self._queue.count(backend)} requests queued for "
                f"backend {backend or '(not yet known)'!r}, the limit (max_queued_requests) is "
                f"{limit}; every replica is at max_concurrent_queries: retry later or add replicas")
        request.queued_under = backend
        self._move(request, RequestState.QUEUED)

    def _unreserve_locked(self, request: Response) -> None:
        if request.queued_under is not None:
            self._queue.unreserve(request.queued_under)
            request.queued_under = None

    def _unwatched_locked(self) -> list[Response]:
        """Requests in flight whose completion nobody may look at soon.

        A slot is normally freed when the caller reads the answer (``ray.get`` or ``await``
        on the caller's thread: no extra callback per request). Once requests queue, a slot
        must not wait for a caller that reads later (or never): every request in flight
        then gets a completion callback that frees its slot.
        """
        todo = [r for r in self._running if not r.watched and r.ref is not None]
        for request in todo:
            request.watched = True
        return todo

    def _watch(self, requests: list[Response]) -> None:
        for request in requests:
            ref = request.ref
            if ref is not None:
                self.transport.on_completed(ref, functools.partial(self._completed, request, ref))

    def _completed(self, request: Response, ref: Any, value: Any) -> None:
        """A watched attempt completed (on the transport's callback thread)."""
        if request.ref is not ref:
            return  # an old attempt
        if isinstance(value, BaseException) and request.replica is not None and \
                self.transport.classify(value, request.replica, request.producers) \
                is not Failure.APPLICATION:
            # retry now, even if nobody reads the answer yet: the loop decides
            loops.background_loop().call_soon_threadsafe(self.on_failure, request, value, ref)
            return
        with self._lock:
            if request.replica is not None:
                self._backoff.answered(request.replica.actor_name)
            self._release_locked(request)

    # -- the request path --------------------------------------------------------------------
    def submit(self, request: Response) -> None:
        """Send now if a replica is free; else queue (or refuse with back-pressure)."""
        info = self._info
        if info is not None and info.batch_size and not request.stream and not request.deps:
            self._batcher.add(request, info.batch_size, info.batch_timeout_s)
            return
        if request.deps and any(dep.ref is None for dep in request.deps):
            # an argument is still queued: route once it has a replica (never blocks here)
            request.waiting = loops.start(self._route_waiting(request, reserved=False),
                                          f"serveplane-route-{request.request_id}")
            return
        with self._lock:
            replica = self._try_pick(request)
            if replica is None:
                self._check_exists_locked()
                self._reserve_queue_slot(request)
                unwatched = self._unwatched_locked()
        if replica is not None:
            self._send(request)
        else:
            self._watch(unwatched)
            request.waiting = loops.start(self._route_waiting(request, reserved=True),
                                          f"serveplane-route-{request.request_id}")

    def route_later(self, request: Response) -> Any:
        """Route ``request`` on the caller's loop (or the background loop) when it can."""
        return loops.start(self._route_waiting(request, reserved=False),
                           f"serveplane-route-{request.request_id}")

    async def _route_waiting(self, request: Response, reserved: bool, settle_deps: bool = False) -> None:
        loop = asyncio.get_running_loop()
        replica: ReplicaInfo | None = None
        waiter: _Waiter | None = None
        try:
            for dep in request.deps:
                if settle_deps:
                    await dep  # its own retries run; its error becomes ours
                elif dep.ref is None:
                    await dep.routed()
            while True:
                remaining = request.queue_deadline - self.clock.monotonic()
                with self._lock:
                    if request.state.final:  # cancelled while it waited: awaiters read .failure
                        return
                    info = self._info
                    if request.backend is not None and info is not None and \
                            request.backend not in info.traffic:
                        request.backend = None  # traffic moved while it waited
                    replica = self._try_pick(request)
                    if replica is None:
                        self._check_exists_locked()  # deleted while it waited: fail now
                    if replica is None and remaining > 0:
                        if not reserved:
                            backend = request.backend or UNKNOWN_BACKEND
                            self._queue.reserve(backend, UNBOUNDED)  # retries are never refused
                            request.queued_under = backend
                            reserved = True
                        if request.state is not RequestState.QUEUED:
                            self._move(request, RequestState.QUEUED)
                        waiter = _Waiter(request, loop)
                        self._queue.append(waiter)
                        unwatched = self._unwatched_locked()
                if replica is not None:
                    break
                if waiter is None:
                    self._expire_queued(request)
                self._watch(unwatched)
                timer = loop.call_later(remaining, _expire, waiter.future)
                try:
                    replica = await waiter.future
                finally:
                    timer.cancel()
                    self._forget(waiter)
                waiter = None
                if replica is not None:
                    break
        except BaseException:
            if waiter is not None:
                self._forget(waiter)
                if _handed_over(waiter.future) is not None:
                    with self._lock:  # cancelled just after a slot was handed over: give it back
                        self._release_locked(request)
            raise
        finally:
            if reserved:
                with self._lock:
                    self._unreserve_locked(request)
        if request.state.final:  # cancelled as the slot arrived: awaiters read .failure
            self.release(request)
            return
        self._send(request)

    def _expire_queued(self, request: Response) -> NoReturn:
        """Its deadline passed while it waited for a slot: it fails and never runs."""
        with self._lock:
            if request.state.final:
                raise request.failure or RequestCancelledError(f"{request!r} was cancelled")
            what = "deadline" if request.deadline is not None else "queue timeout"
            request.failure = NoReplicasError(
                f"no replica of endpoint {self.endpoint!r} (backend "
                f"{request.backend or '(not yet known)'!r}) had a free slot within "
                f"{request.queue_timeout_s:.3g}s ({what}); it never ran: check that the backend has "
                "running replicas, or raise timeout_s")
            self._move(request, RequestState.FAILED)
        raise request.failure

    def _forget(self, waiter: _Waiter) -> None:
        with self._lock:
            self._queue.remove(waiter)

    def _send(self, request: Response) -> None:
        """One actor call on the replica ``request`` has claimed."""
        replica = request.replica
        assert replica is not None
        request.attempts += 1
        meta = RequestMetadata(request.request_id, self.endpoint, request.method_name,
                               request.session_id, request.shard_key, http=request.http,
                               http_method=request.http_method, http_headers=request.http_headers,
                               deadline=request.wall_deadline)
        if tracing.ENABLED:
            meta = tracing.route_span(request, self.endpoint, replica, meta)
        if request.deps:
            args, kwargs = request.resolved_args()
            request.producers = request.argument_producers()
        else:
            args, kwargs = request.args, request.kwargs
        try:
            if request.stream:
                ref = self.transport.send_stream(replica, meta, args, kwargs)
            else:
                ref = self.transport.send(replica, meta, args, kwargs)
        except BaseException:
            with self._lock:
                self._release_locked(request)
                self._move(request, RequestState.FAILED)
            raise
        with self._lock:
            if request.state is RequestState.CANCELLED:  # cancelled while it was being sent
                self.transport.cancel(ref)
                return
            self._move(request, RequestState.RUNNING)
            request.ref = ref
        self.stats.requests[replica.backend] += 1
        if self._queue and not request.stream:
            with self._lock:
                unwatched = self._unwatched_locked()
            self._watch(unwatched)
        if request.attempts == 1:
            info = self._info
            if info is not None and info.shadows:
                fire_shadows(self, request, info.shadows, args, kwargs)

    def detach(self, request: Response) -> None:
        """The caller took ``request``'s ``ObjectRef`` and reads the answer itself (Ray Serve
        1.x's ``ray.get(handle.remote())``): no retry; when the call completes its slot is
        freed, a replica that died is hidden and shadows are compared."""
        ref = request.ref
        with self._lock:
            if not request.state.final:
                self._move(request, RequestState.DONE)
            request.watched = True
        self.transport.on_completed(ref, functools.partial(self._detached_done, request))

    def _detached_done(self, request: Response, value: Any) -> None:
        replica = request.replica
        failure = Failure.APPLICATION
        if isinstance(value, BaseException) and replica is not None:
            failure = self.transport.classify(value, replica, request.producers)
        if failure is Failure.REPLICA_DIED and replica is not None:
            self.mark_dead(replica)
        elif failure is Failure.REPLICA_UNAVAILABLE and replica is not None:
            self.back_off(replica)
        with self._lock:
            if failure is Failure.APPLICATION and replica is not None:
                self._backoff.answered(replica.actor_name)
            self._release_locked(request)
        shadows, request.shadows = request.shadows, []
        for shadow in shadows:
            shadow.on_primary(value)

    def finish(self, request: Response) -> None:
        """The caller read the answer (value or application error): free the slot, once."""
        with self._lock:
            if not request.state.final:
                self._move(request, RequestState.DONE)
            if request.replica is not None:
                name = request.replica.actor_name
                self._backoff.answered(name)
                self._slots.answered(name)
                self.stats.outcomes.answered(request.replica.backend, self.clock.monotonic() - request.started, True)
            self._release_locked(request)

    def streaming(self, request: Response) -> None:
        """A stream delivered its first chunk: from now on it is never retried."""
        with self._lock:
            if request.state is RequestState.RUNNING:
                self._move(request, RequestState.STREAMING)

    def cancel(self, request: Response, error: BaseException | None = None) -> bool:
        """Cancel ``request``: queued, it never reaches a replica; running, its replica's call
        is cancelled; either way its slot is free at once. ``error`` is what its awaiters get
        (``RequestCancelledError`` by default; a deadline gives ``RequestTimeoutError``).
        Returns False if the request was already final."""
        with self._lock:
            if request.state.final:
                return False
            request.failure = error or RequestCancelledError(
                f"request {request.request_id} to endpoint {self.endpoint!r} was cancelled")
            self._move(request, RequestState.CANCELLED)
            self.stats.cancelled += 1
            ref = request.ref
            self._release_locked(request)
            waiters = [w for w in self._queue if w.request is request]
            for waiter in waiters:
                self._queue.remove(waiter)
                _call_soon(waiter.loop, self._hand_over, waiter, None)
            request.shadows = []  # nothing to compare a cancelled answer with
        if ref is not None:
            self.transport.cancel(ref)
        return True

    def on_failure(self, request: Response, error: BaseException, failed_ref: Any) -> BaseException | None:
        """Decide what a failed attempt means (``decision.decide``), then act.

        Returns the error the caller gets, or ``None`` when the request goes on (it is being
        re-routed: wait for ``request.waiting``). Safe to call from every awaiter of the same
        request: only the first one that reports an attempt acts on it.
        """
        with self._lock:
            if request.state.final:
                return request.failure or error
            if request.ref is not failed_ref:
                return None  # another awaiter already re-routed this attempt
            replica = request.replica
            kind = (self.transport.classify(error, replica, request.producers)
                    if replica is not None else Failure.APPLICATION)
            assert replica is not None or kind is Failure.APPLICATION
            config = self._config(replica.backend) if replica is not None else DEFAULT_CONFIG
            decision = decide(kind, idempotent=config.idempotent, retries_done=request.attempts - 1,
                              max_retries=config.max_retries, has_deps=bool(request.deps),
                              chunks_delivered=request.chunks)
            if decision.verdict is Verdict.ANSWER:
                self._move(request, RequestState.DONE)
                if replica is not None:
                    self._backoff.answered(replica.actor_name)  # it ran the user's code
                    self._slots.answered(replica.actor_name)
                    self.stats.outcomes.answered(replica.backend, self.clock.monotonic() - request.started, False)
                self._release_locked(request)
                return error
            assert replica is not None
            if kind is Failure.REPLICA_DIED:
                self._release_locked(request, hand_over=False)
                self._hide_locked(replica)
            elif kind is Failure.REPLICA_UNAVAILABLE:
                self._release_locked(request, hand_over=False)
                self._back_off_locked(replica)
            elif kind is Failure.REPLICA_FULL:
                self._release_locked(request, hand_over=False)
                self._hold_full_locked(replica)
            else:
                self._release_locked(request)
            if decision.verdict is Verdict.FAIL:
                self._move(request, RequestState.FAILED)
                if kind is Failure.DEPENDENCY_DIED:
                    request.failure = error
                else:
                    self.stats.outcomes.replica_failed(replica.backend)
                    what = "died" if kind is Failure.REPLICA_DIED else "became unreachable"
                    request.failure = ReplicaDiedError(
                        f"replica {replica.actor_name} {what} while running a request of endpoint "
                        f"{self.endpoint!r}; not retried because {decision.why}")
                    request.failure.__cause__ = error
                return request.failure
            if decision.verdict is Verdict.TRY_ELSEWHERE:
                request.attempts -= 1  # it never ran there: not a retry
                self.stats.refused += 1
            else:
                self.stats.retries += 1
            placeholder: concurrent.futures.Future = concurrent.futures.Future()
            request.waiting = placeholder  # before ref=None: awaiters never see neither
            request.previous_ref = failed_ref
            request.previous_replica = replica
            request.ref = None
            request.replica = None
            request.batch_index = None  # retried on its own
            request.batch = None
        self._reroute(request, placeholder, settle_deps=kind is Failure.DEPENDENCY_DIED)
        return None

    def _reroute(self, request: Response, placeholder: concurrent.futures.Future,
                 settle_deps: bool) -> None:
        if not settle_deps:
            try:
                with self._lock:
                    replica = self._try_pick(request)
                if replica is not None:
                    self._send(request)
                    placeholder.set_result(None)
                    return
            except BaseException as exc:  # noqa: BLE001 - the awaiters get it
                placeholder.set_exception(exc)
                return
        routing = loops.start(self._route_waiting(request, reserved=False, settle_deps=settle_deps),
                              f"serveplane-retry-{request.request_id}")
        routing.add_done_callback(lambda done: loops.copy_outcome(done, placeholder))

    def _hold_full_locked(self, replica: ReplicaInfo) -> None:
        """``replica`` refused a request (full across routers, or draining): skip it briefly."""
        self._slots.refused(replica.actor_name)
        self._live_cache.clear()
        self._schedule_backoff_end_locked()

    def _hide_locked(self, replica: ReplicaInfo) -> None:
        if any(r.actor_name == replica.actor_name for r in self._replicas.get(replica.backend, ())):
            if replica.actor_name not in self._dead:
                self._dead.add(replica.actor_name)
                self._live_cache.clear()
                logger.info("replica %s of endpoint %r died; routing around it",
                            replica.actor_name, self.endpoint)
                if self.controller_name is not None:
                    report_replica_died(self.controller_name, self.namespace, replica.backend,
                                        replica.actor_name)
        self._wake_all_locked()

    def mark_dead(self, replica: ReplicaInfo) -> None:
        with self._lock:
            self._hide_locked(replica)

    def back_off(self, replica: ReplicaInfo) -> None:
        """``replica`` was unreachable: skip it for a while (it may come back)."""
        with self._lock:
            self._back_off_locked(replica)

    def _back_off_locked(self, replica: ReplicaInfo) -> None:
        period = self._backoff.unavailable(replica.actor_name)
        self._live_cache.clear()
        logger.info("replica %s of endpoint %r is unreachable; skipping it for %.2fs",
                    replica.actor_name, self.endpoint, period)
        self._schedule_backoff_end_locked()

    def _schedule_backoff_end_locked(self) -> None:
        """Wake the queue when the first backoff period ends (queued requests may use it)."""
        ends = [t for t in (self._backoff.next_end_in(), self._slots.full.next_end_in()) if t is not None]
        remaining = min(ends) if ends else None
        if remaining is None or self._backoff_end_pending:
            return
        self._backoff_end_pending = True
        loop = loops.background_loop()
        loop.call_soon_threadsafe(loop.call_later, remaining, self._on_backoff_end)

    def _on_backoff_end(self) -> None:
        with self._lock:
            self._backoff_end_pending = False
            self._live_cache.clear()
            self._wake_all_locked()
            self._schedule_backoff_end_locked()  # the next period (or this one, if the timer ran early)

    # -- used by the batcher and shadows ------------------------------------------------------
    def claim_for_batch(self, batch: list[Response]) -> tuple[
            list[tuple[ReplicaInfo, list[Response]]], list[Response], list[Response]]:
        """Slots for a gathered batch, each request picked on its own: the requests grouped
        by replica, those that must wait, and those cancelled while they were gathered."""
        groups: dict[str, tuple[ReplicaInfo, list[Response]]] = {}
        waiting, cancelled = [], []
        with self._lock:
            for request in batch:
                if request.state.final:
                    cancelled.append(request)
                    continue
                replica = self._try_pick(request)
                if replica is None:
                    waiting.append(request)
                else:
                    groups.setdefault(replica.actor_name, (replica, []))[1].append(request)
        return list(groups.values()), waiting, cancelled

    def sent_batch(self, batch: list[Response], ref: Any) -> None:
        """The requests of ``batch`` are running as one call (``ref`` answers them all)."""
        cancelled = False
        call = BatchCall(ref)
        with self._lock:
            for index, request in enumerate(batch):
                request.batch_index = index
                request.batch = call
                request.attempts = 1
                if request.state.final:  # cancelled while it was sent: its slot is free already
                    cancelled = True
                    continue
                request.backend = request.replica.backend if request.replica is not None else request.backend
                self._move(request, RequestState.RUNNING)
                request.ref = ref
        if cancelled and all(r.state.final for r in batch):
            self.transport.cancel(ref)

    def fail(self, request: Response, error: BaseException) -> None:
        """``request`` failed before it ran (its send raised): free its slot."""
        with self._lock:
            self._release_locked(request)
            request.failure = error
            if not request.state.final:
                self._move(request, RequestState.FAILED)

    def release(self, request: Response) -> None:
        with self._lock:
            self._release_locked(request)

    def claim_for_shadow(self, backend: str) -> ReplicaInfo | None:
        """The least loaded replica of ``backend`` with a free slot, claimed; shadows never wait."""
        with self._lock:
            limit = self._config(backend).max_concurrent_queries
            free = [r for r in self._live(backend) if self._slots.has_room(r.actor_name, limit)]
            if not free:
                return None
            replica = min(free, key=self._load)
            self._slots.claim(replica.actor_name)
            return replica

    def release_shadow(self, replica: ReplicaInfo) -> None:
        with self._lock:
            self._free_slot_locked(replica)

    # -- fanout ----------------------------------------------------------------------------------
    def fanout_targets(self) -> list[ReplicaInfo]:
        """Every live replica of the backends that currently get traffic."""
        with self._lock:
            info = self._info
            if info is None:
                return []
            return [r for backend, weight in sorted(info.traffic.items()) if weight > 0
                    for r in self._live(backend)]

    def send_direct(self, replica: ReplicaInfo, method_name: str, args: tuple, kwargs: dict,
                    http: bool = False) -> Any:
        meta = RequestMetadata(self.next_request_id(), self.endpoint, method_name, http=http)
        return self.transport.send(replica, meta, args, kwargs)

    def forget_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    # -- introspection -----------------------------------------------------------------------------
    def load_report(self) -> dict[str, dict[str, float]]:
        """Per backend: queued, in flight and request rate, for the controller's autoscaler."""
        now = self.clock.monotonic()
        with self._lock:
            rates = self.stats.rates(now)
            report = {}
            for backend, replicas in self._replicas.items():
                report[backend] = {
                    "queued": float(self._queue.count(backend)),
                    "in_flight": float(self._slots.sum_of(r.actor_name for r in replicas)),
                    "rate": rates.get(backend, 0.0),
                }
            waiting = self._queue.count(UNKNOWN_BACKEND)
            if waiting and self._info is not None:
                for backend in self._info.traffic:
                    entry = report.setdefault(backend, {"queued": 0.0, "in_flight": 0.0, "rate": 0.0})
                    entry["queued"] += waiting
            return report

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            info = self._info
            return {
                "endpoint": self.endpoint,
                "started_at": self.started_at,
                "traffic": dict(info.traffic) if info else {},
                "shadow_traffic": dict(info.shadows) if info else {},
                "policy": self._policy_key[0],
                "replicas": {b: [r.actor_name for r in self._live(b)] for b in self._replicas},
                "dead_replicas": sorted(self._dead),
                "backed_off_replicas": sorted(self._backoff.blocked()),
                "in_flight": self._slots.total(),
                "in_flight_by_replica": self._slots.by_replica(),
                "full_replicas": sorted(self._slots.full.blocked()),
                "queued": self._queue.total(),
                "requests": sum(self.stats.requests.values()),
                "requests_by_backend": dict(self.stats.requests),
                "retries": self.stats.retries,
                "refused_by_replicas": self.stats.refused,
                "cancelled": self.stats.cancelled,
                "session_moves": self.stats.session_moves,
                "sessions": len(self._sessions),
                "back_pressure_rejections": self.stats.back_pressure_rejections,
                "shadows": {b: s.as_dict() for b, s in self.stats.shadows.items()},
                "backends": self.stats.outcomes.as_dict(),
                **self._batcher.statistics(),
            }

    def __repr__(self) -> str:
        s = self.statistics()
        backends = " ".join(f"{b}={w:g}" for b, w in sorted(s["traffic"].items())) or "(no config)"
        running = sum(len(v) for v in s["replicas"].values())
        backed_off = f", {len(s['backed_off_replicas'])} backed off" if s["backed_off_replicas"] else ""
        return (f"<Router {self.endpoint} [backends: {backends} | replicas: {running} running{backed_off} | "
                f"in flight: {s['in_flight']} | queued: {s['queued']}]>")


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # that loop is closed: its waiter is gone with it


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _handed_over(future: asyncio.Future) -> ReplicaInfo | None:
    if future.done() and not future.cancelled():
        return future.result()
    return None
