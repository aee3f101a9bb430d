"""``EndpointRouter``: one per endpoint per process; the hot path of every request.

Invariants:
- one Ray actor call per request; the controller is never on the way;
- a replica never has more than ``max_concurrent_queries`` requests from this router;
  when all are full, requests wait in this router's queue (bound to no replica), and past
  ``max_queued_requests`` they fail at once with ``BackPressureError``;
- a replica seen dead leaves this router's set at once, and a later update that still
  lists it does not bring it back;
- shadows are fired without waiting and never change or delay the primary answer.

Config arrives through a ``ConfigSource``; callbacks swap whole immutable values under a
short lock. Picking a replica is synchronous; only waiting is async (on the caller's loop,
or on one background loop per process for sync callers).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import ray

from serveplane.config import BackendConfig
from serveplane.exceptions import BackPressureError, NoReplicasError, ReplicaDiedError
from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, RequestMetadata, keys
from serveplane.router.policies import (
    RequestInfo,
    Router,
    key_fraction,
    make_policy,
    rendezvous_rank,
    weighted_pick,
)
from serveplane.router.stats import RouterStats, ShadowOutcome, ShadowStats

if TYPE_CHECKING:
    from serveplane.router.handle import Response

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = BackendConfig()
MAX_TRACKED_SESSIONS = 100_000
DEAD_ERRORS = (ray.exceptions.RayActorError,)


class EndpointRouter:
    def __init__(self, endpoint: str, source: Any, controller_name: str | None = None,
                 namespace: str | None = None) -> None:
        self.endpoint = endpoint
        self.router_id = f"{endpoint}:{uuid.uuid4().hex[:8]}"
        self.controller_name = controller_name
        self.namespace = namespace
        self._source = source
        self._lock = threading.Lock()
        self._info: EndpointInfo | None = None
        self._policy: Router = make_policy("round_robin")
        self._policy_key: tuple[str, bytes | None] = ("round_robin", None)
        self._replicas: dict[str, tuple[ReplicaInfo, ...]] = {}
        self._configs: dict[str, BackendConfig] = {}
        self._in_flight: dict[str, int] = collections.defaultdict(int)
        self._dead: set[str] = set()
        self._live_cache: dict[str, list[ReplicaInfo]] = {}
        self._controller: Any = None
        self._queued: dict[str, int] = collections.defaultdict(int)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._sessions: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._subscriptions: dict[str, Any] = {}
        self._batches: dict[str, list[Response]] = {}  # method -> requests waiting for a batch
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        self.stats = RouterStats()
        self._policy.load = self._load
        self._subscriptions[keys.endpoint(endpoint)] = source.subscribe(
            keys.endpoint(endpoint), self._on_endpoint)

    # -- config updates (any thread) ----------------------------------------------------
    def _on_endpoint(self, info: EndpointInfo | None) -> None:
        with self._lock:
            self._info = info
            if info is not None:
                policy_key = (info.router, info.router_blob)
                if policy_key != self._policy_key:
                    self._policy = make_policy(info.router, info.router_blob)
                    self._policy.load = self._load
                    self._policy_key = policy_key
            wanted = set(info.traffic) | set(info.shadows) if info is not None else set()
            self._wake_locked()
        self._follow_backends(wanted)

    def _follow_backends(self, wanted: set[str]) -> None:
        for backend in wanted:
            for key, cb in ((keys.replicas(backend), self._replicas_cb(backend)),
                            (keys.backend_config(backend), self._config_cb(backend))):
                if key not in self._subscriptions:
                    self._subscriptions[key] = None  # reserve before a synchronous callback
                    self._subscriptions[key] = self._source.subscribe(key, cb)

    def _replicas_cb(self, backend: str) -> Any:
        def on_replicas(replicas: tuple[ReplicaInfo, ...] | None) -> None:
            with self._lock:
                replicas = tuple(replicas or ())
                names = {r.actor_name for r in replicas}
                # forget dead replicas the controller has also dropped; keep hiding the others
                self._dead &= names | {n for b, rs in self._replicas.items() if b != backend
                                       for n in (r.actor_name for r in rs)}
                self._replicas[backend] = replicas
                self._live_cache.clear()
                self._wake_locked()
        return on_replicas

    def _config_cb(self, backend: str) -> Any:
        def on_config(info: BackendInfo | None) -> None:
            with self._lock:
                if info is None:
                    self._configs.pop(backend, None)
                else:
                    self._configs[backend] = info.config
                self._wake_locked()
        return on_config

    def close(self) -> None:
        for token in self._subscriptions.values():
            if token is not None:
                self._source.unsubscribe(token)
        self._subscriptions.clear()

    # -- picking (under the lock) ---------------------------------------------------------
    def _load(self, replica: ReplicaInfo) -> int:
        return self._in_flight[replica.actor_name]

    def _config(self, backend: str) -> BackendConfig:
        return self._configs.get(backend, DEFAULT_CONFIG)

    def _live(self, backend: str) -> list[ReplicaInfo]:
        live = self._live_cache.get(backend)
        if live is None:
            dead = self._dead
            live = [r for r in self._replicas.get(backend, ()) if r.actor_name not in dead]
            self._live_cache[backend] = live
        return live

    def _choose_backend(self, request: Response) -> str | None:
        info = self._info
        if info is None:
            return None
        key = request.session_id or request.shard_key
        u = key_fraction(key) if key is not None else random.random()
        return weighted_pick(info.traffic, u)

    def _try_pick(self, request: Response) -> ReplicaInfo | None:
        if request.backend is None:
            request.backend = self._choose_backend(request)
            if request.backend is None:
                return None
        replicas = self._live(request.backend)
        if not replicas:
            return None
        limit = self._config(request.backend).max_concurrent_queries
        in_flight = self._in_flight
        sid = request.session_id
        if sid is not None:
            chosen = rendezvous_rank(sid, replicas)[0]
            if in_flight[chosen.actor_name] >= limit:
                return None
            previous = self._sessions.get(sid)
            if previous is not None and previous != chosen.actor_name:
                self.stats.session_moves += 1
            self._sessions[sid] = chosen.actor_name
            self._sessions.move_to_end(sid)
            if len(self._sessions) > MAX_TRACKED_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            free = replicas if all(in_flight[r.actor_name] < limit for r in replicas) else \
                [r for r in replicas if in_flight[r.actor_name] < limit]
            if not free:
                return None
            chosen = free[0] if len(free) == 1 else self._policy.choose(
                free, RequestInfo(self.endpoint, request.method_name, request.shard_key, request.args))
        in_flight[chosen.actor_name] += 1
        return chosen

    def _wake_locked(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for loop, fut in waiters:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:
                    pass  # that loop is closed

    # -- the request path --------------------------------------------------------------------
    def submit(self, request: Response) -> None:
        """Route now if a replica is free; else queue (or refuse with back-pressure)."""
        info = self._info
        if info is not None and info.batch_size and request.session_id is None:
            self._add_to_batch(request, info.batch_size, info.batch_timeout_s)
            return
        with self._lock:
            replica = self._try_pick(request)
            if replica is None:
                self._reserve_queue_slot(request)
        if replica is not None:
            self._send(request, replica)
            self._fire_shadows(request)
            return
        request.start_waiting(self._route_queued(request, reserved=True))

    # -- router-side batching -------------------------------------------------------------
    def _add_to_batch(self, request: Response, size: int, timeout_s: float) -> None:
        """Gather stateless calls of one method; one actor call carries the whole batch."""
        request._waiting = concurrent.futures.Future()
        method = request.method_name
        with self._lock:
            batch = self._batches.get(method)
            if batch is None:
                batch = self._batches[method] = []
                if size > 1:
                    loop = _background_loop()
                    loop.call_soon_threadsafe(loop.call_later, timeout_s, self._flush, method, batch)
            batch.append(request)
            full = len(batch) >= size
            if full:
                del self._batches[method]
        if full:
            self._dispatch(batch)

    def _flush(self, method: str, batch: list[Response]) -> None:
        with self._lock:
            if self._batches.get(method) is not batch:
                return  # already dispatched when it filled up
            del self._batches[method]
        self._dispatch(batch)

    def _dispatch(self, batch: list[Response]) -> None:
        first = batch[0]
        with self._lock:
            replica = self._try_pick(first)
            if replica is not None:
                self._in_flight[replica.actor_name] += len(batch) - 1
        if replica is None:
            # no free replica now: each request waits in the queue on its own
            for request in batch:
                waiter = request._waiting
                request._waiting = None
                request.start_waiting(self._route_queued(request, reserved=False))
                waiter.set_result(None)
            return
        meta = RequestMetadata(first.request_id, self.endpoint, first.method_name)
        try:
            ref = replica.actor_handle.handle_batch.remote(
                meta, [request.resolved_args() for request in batch])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for request in batch:
                self.release(replica)
                request._waiting.set_exception(exc)
            return
        now = time.monotonic()
        self.batch_sizes.append(len(batch))
        for index, request in enumerate(batch):
            request.backend = replica.backend
            request.replica = replica
            request.ref = ref
            request.batch_index = index
            request.attempts = 1
            self.stats.record_request(replica.backend, now)
            request._waiting.set_result(None)
        for request in batch:
            self._fire_shadows(request)  # shadows go one by one; they never join the batch

    def _reserve_queue_slot(self, request: Response) -> None:
        backend = request.backend or ""
        limit = self._config(backend).max_queued_requests if backend else DEFAULT_CONFIG.max_queued_requests
        queued = sum(self._queued.values())
        if queued >= limit:
            self.stats.back_pressure_rejections += 1
            raise BackPressureError(
                f"endpoint {self.endpoint!r} has {queued} requests queued, the limit "
                f"(max_queued_requests of backend {backend!r}) is {limit}; retry later")
        self._queued[backend] += 1
        request.queued_under = backend

    async def _route_queued(self, request: Response, reserved: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout_s
        try:
            while True:
                with self._lock:
                    replica = self._try_pick(request)
                    if replica is None:
                        if not reserved:
                            self._queued[request.backend or ""] += 1
                            request.queued_under = request.backend or ""
                            reserved = True
                        fut = loop.create_future()
                        self._waiters.append((loop, fut))
                if replica is not None:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoReplicasError(
                        f"no replica of endpoint {self.endpoint!r} (backend {request.backend!r}) "
                        f"became available within {request.timeout_s:.0f}s")
                try:
                    await asyncio.wait_for(fut, timeout=remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            if reserved:
                with self._lock:
                    under = request.queued_under if request.queued_under is not None else ""
                    self._queued[under] -= 1
                    request.queued_under = None
        self._send(request, replica)
        if request.attempts == 1:
            self._fire_shadows(request)

    def _send(self, request: Response, replica: ReplicaInfo) -> None:
        request.replica = replica
        request.attempts += 1
        meta = RequestMetadata(request.request_id, self.endpoint, request.method_name,
                               request.session_id, request.shard_key)
        args, kwargs = request.resolved_args()
        try:
            request.ref = replica.actor_handle.handle_request.remote(meta, *args, **kwargs)
        except Exception:
            self.release(replica)
            raise
        self.stats.record_request(replica.backend, time.monotonic())

    def release(self, replica: ReplicaInfo) -> None:
        with self._lock:
            self._in_flight[replica.actor_name] -= 1
            if self._waiters:
                self._wake_locked()

    def on_dead(self, request: Response, error: BaseException) -> None:
        """The replica running ``request`` died: hide it, then retry or give up."""
        replica = request.replica
        assert replica is not None
        with self._lock:
            self._in_flight[replica.actor_name] -= 1
            if any(r.actor_name == replica.actor_name for r in self._replicas.get(replica.backend, ())):
                self._dead.add(replica.actor_name)
                self._live_cache.clear()
            self._wake_locked()
        self._report_failure(replica)
        config = self._config(replica.backend)
        retries_done = request.attempts - 1
        if not config.idempotent or retries_done >= config.max_retries:
            why = ("the backend is configured idempotent=False" if not config.idempotent
                   else f"it was retried {retries_done} times (max_retries={config.max_retries})")
            raise ReplicaDiedError(
                f"replica {replica.actor_name} died while running a request of endpoint "
                f"{self.endpoint!r}; not retried because {why}") from error
        self.stats.retries += 1
        request.ref = None
        request.replica = None
        request.batch_index = None  # retried on its own

    # -- shadows -------------------------------------------------------------------------------
    def _fire_shadows(self, request: Response) -> None:
        info = self._info
        if info is None or not info.shadows:
            return
        for backend, proportion in info.shadows.items():
            if random.random() >= proportion:
                continue
            stats = self.stats.shadows.setdefault(backend, ShadowStats())
            stats.count += 1
            with self._lock:
                limit = self._config(backend).max_concurrent_queries
                free = [r for r in self._live(backend) if self._in_flight[r.actor_name] < limit]
                replica = min(free, key=self._load) if free else None
                if replica is not None:
                    self._in_flight[replica.actor_name] += 1
            if replica is None:
                stats.dropped += 1
                continue
            outcome = ShadowOutcome(stats, self._lock)
            request.shadows.append(outcome)
            meta = RequestMetadata(request.request_id, self.endpoint, request.method_name,
                                   request.session_id, request.shard_key, is_shadow=True)
            args, kwargs = request.resolved_args()
            ref = replica.actor_handle.handle_request.remote(meta, *args, **kwargs)

            def done(value: Any, replica: ReplicaInfo = replica, outcome: ShadowOutcome = outcome) -> None:
                self.release(replica)
                outcome.on_shadow(value)

            ref._on_completed(done)

    # -- fanout --------------------------------------------------------------------------------
    def fanout_targets(self) -> list[ReplicaInfo]:
        with self._lock:
            info = self._info
            if info is None:
                return []
            return [r for backend, w in sorted(info.traffic.items()) if w > 0 for r in self._live(backend)]

    def send_direct(self, replica: ReplicaInfo, method_name: str, args: tuple, kwargs: dict) -> Any:
        meta = RequestMetadata(uuid.uuid4().hex, self.endpoint, method_name)
        return replica.actor_handle.handle_request.remote(meta, *args, **kwargs)

    def _report_failure(self, replica: ReplicaInfo) -> None:
        """Tell the controller, which verifies and republishes the set to every router."""
        if self.controller_name is None:
            return
        try:
            if self._controller is None:
                self._controller = ray.get_actor(self.controller_name, namespace=self.namespace)
            self._controller.report_replica_failure.remote(replica.backend, replica.actor_name)
        except Exception:  # noqa: BLE001 - the controller's own health check still catches it
            self._controller = None

    def mark_dead(self, replica: ReplicaInfo) -> None:
        self._report_failure(replica)
        with self._lock:
            self._dead.add(replica.actor_name)
            self._live_cache.clear()
            self._wake_locked()

    def forget_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    # -- introspection ---------------------------------------------------------------------------
    def load_report(self) -> dict[str, dict[str, float]]:
        now = time.monotonic()
        with self._lock:
            rates = self.stats.rates(now)
            report = {}
            for backend, replicas in self._replicas.items():
                report[backend] = {
                    "queued": float(self._queued.get(backend, 0)),
                    "in_flight": float(sum(self._in_flight[r.actor_name] for r in replicas)),
                    "rate": rates.get(backend, 0.0),
                }
            if self._queued.get(""):
                # waiting before a backend could be chosen (no config yet)
                for backend in (self._info.traffic if self._info else {}):
                    report.setdefault(backend, {"queued": 0.0, "in_flight": 0.0, "rate": 0.0})
                    report[backend]["queued"] += self._queued[""]
            return report

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            info = self._info
            return {
                "endpoint": self.endpoint,
                "traffic": dict(info.traffic) if info else {},
                "replicas": {b: [r.actor_name for r in self._live(b)] for b in self._replicas},
                "in_flight": sum(self._in_flight.values()),
                "queued": sum(self._queued.values()),
                "requests": self.stats.requests,
                "retries": self.stats.retries,
                "session_moves": self.stats.session_moves,
                "sessions": len(self._sessions),
                "back_pressure_rejections": self.stats.back_pressure_rejections,
                "batches": len(self.batch_sizes),
                "max_batch_size_seen": max(self.batch_sizes, default=0),
                "shadows": {b: s.as_dict() for b, s in self.stats.shadows.items()},
            }

    def __repr__(self) -> str:
        s = self.statistics()
        backends = " ".join(f"{b}={w:g}" for b, w in sorted(s["traffic"].items()))
        running = sum(len(v) for v in s["replicas"].values())
        return (f"<Router {self.endpoint} [backends: {backends} | replicas: {running} running | "
                f"in flight: {s['in_flight']} | queued: {s['queued']}]>")


def _background_loop() -> asyncio.AbstractEventLoop:
    from serveplane.router.handle import background_loop

    return background_loop()


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
