"""Deterministic simulation of the data plane: where its features meet.

The real routers (``EndpointRouter`` with its slot table, wait queue, failure decision,
batcher, shadows, streams, deadlines and figures) run on one virtual-time loop
(``world.VirtualTimeLoop``) over simulated replicas (``world.World``). Several routers
(processes) share the replicas, as several callers' processes do. A seeded schedule mixes:

- requests: unary, stream, router-batched, session, shard key, shadowed, fanout, and
  nested (a ``Response`` passed as an argument);
- what callers do: await, ``cancel()``, cancel the awaiting task (an HTTP client that
  disconnects), deadlines (tiny ones too), streams read in part and dropped without
  ``cancel()``;
- what user code does: answer, raise, raise its own ``TimeoutError``;
- replicas that die (before or after a stream's first chunk), become unavailable, drain
  (scale-down: unlisted, then stopped once idle), are slow, or are added;
- config changes: ``max_concurrent_queries``, batch size, traffic.

Invariants, checked after every step (``check_step``) and once idle (``check_idle``):

1. every request ends exactly once, with an outcome its history allows (``Request.allowed``):
   its value, its own user error with its own type, a cancel it asked for, a deadline it
   had, back-pressure only at submission, a replica failure only when one of its replicas
   failed; never an internal error; nothing raised on a callback that nobody sees;
2. idle means every slot table, queue count, waiter and replica admission count is zero;
3. no replica runs more than ``max_concurrent_queries`` across all routers, and no router
   holds more slots on one than it allows;
4. one request's cancel or deadline never changes another's outcome (a consequence of 1:
   a batch-mate of a cancelled request still gets its own value);
5. ``max_queued_requests`` holds on every path;
6. a session moves only when its replica died or left;
7. every request that reached a backend is counted once in that backend's outcomes,
   whatever its end (answered, failed, timed out, cancelled, expired, refused);
8. a stream is never sent again after its first chunk;
9. a non-idempotent request never runs twice;
10. nothing grows without bound: sessions, dead-replica sets and subscriptions stay within
    what the current config names.

Replay one seed: ``make sim-data SEED=<n>`` (or ``python -m tests.sim --plane data --seed <n> -v``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import random
import re
from typing import Any

from serveplane.config import BackendConfig
from serveplane.exceptions import (
    BackPressureError,
    NoReplicasError,
    ReplicaDiedError,
    RequestCancelledError,
    RequestTimeoutError,
)
from serveplane.records import BackendInfo, EndpointInfo, keys
from serveplane.router import Handle, StaticSource
from serveplane.router import loop as loops
from serveplane.router.response import QUEUE_TIMEOUT_S, Response
from serveplane.router.following import KEEP_LEFT
from serveplane.router.router import EndpointRouter
from serveplane.router.stream import ResponseStream
from tests.sim.dataplane.world import Job, Stuck, UserError, UserTimeout, VirtualTimeLoop, Violation, World

ENDPOINT = "ep"
QUIESCE_S = QUEUE_TIMEOUT_S * 3  # time enough for every queue timeout and retry to end


@dataclasses.dataclass
class Request:
    number: int
    kind: str                   # unary | stream | session | shard | nested | fanout
    behaviour: str              # await | cancel | task_cancel | deadline | abandon
    job: Job
    router: int
    submitted_at: float
    timeout_s: float | None = None
    session: str | None = None
    dep: Request | None = None
    response: Any = None
    outcome: Any = None         # the value, or the exception the caller got
    ended: int = 0              # how many times the caller's task ended (must be 1)
    refused_at_submit: bool = False
    chunks: list = dataclasses.field(default_factory=list)
    cancelled_at: float | None = None
    routed: Any = None          # the router's record of it (RoutedRequest)

    def allowed(self, sim: DataPlaneSimulation) -> str | None:
        """Why this request's outcome is not one its history allows (``None``: it is)."""
        out = self.outcome
        if self.kind == "fanout":
            return _fanout_problem(self, sim)
        if not isinstance(out, BaseException):
            expected = self.expected()
            if self.kind == "stream":
                if self.behaviour == "abandon":
                    return None if self.chunks == expected[:len(self.chunks)] else \
                        f"stream chunks {self.chunks} are not a prefix of {expected}"
                return None if self.chunks == expected else f"stream delivered {self.chunks}, expected {expected}"
            if self.job.fail is not None and self.dep is None:
                return f"user code raised, yet the caller got the value {out!r}"
            return None if out == expected or self.dep is not None else f"got {out!r}, expected {expected!r}"
        if self.dep is not None and self.dep.outcome is not None and isinstance(self.dep.outcome, BaseException):
            return None  # its argument failed: that error (or its consequence) is its own
        if isinstance(out, BackPressureError):
            # at submission; or when it waits again (a retry, a batch-mate without a slot)
            waited_again = self.number in sim.world.troubled or self.number in sim.world.refused_jobs or (
                self.routed is not None and
                                                                 (self.routed.batched or self.routed.attempts))
            return None if self.refused_at_submit or waited_again else "back-pressure after the request was accepted"
        if isinstance(out, UserTimeout):
            return None if self.job.fail == "timeout" else "a user TimeoutError it never raised"
        if isinstance(out, UserError):
            return None if self.job.fail == "value" else "a user error it never raised"
        if isinstance(out, (RequestCancelledError, asyncio.CancelledError)):
            return None if self.behaviour in ("cancel", "task_cancel") else \
                f"cancelled ({type(out).__name__}: {out}) though its caller never cancelled"
        if isinstance(out, RequestTimeoutError):  # NoReplicasError too
            if self.timeout_s is not None:
                return None
            if isinstance(out, NoReplicasError) and sim.loop.now - self.submitted_at >= QUEUE_TIMEOUT_S:
                return None
            return f"timed out ({out}) without a deadline"
        if isinstance(out, ReplicaDiedError):
            return None if self.number in sim.world.troubled else f"ReplicaDiedError ({out}) but no replica of it failed"
        return f"an internal error reached the caller: {type(out).__name__}: {out}"

    def expected(self) -> Any:
        if self.kind == "stream":
            return [self.job.chunk(i) for i in range(self.job.chunks)]
        return self.job.answer()



def _fanout_problem(request: Request, sim: DataPlaneSimulation) -> str | None:
    out = request.outcome
    if isinstance(out, (asyncio.CancelledError, RequestCancelledError)):
        return None if request.behaviour in ("cancel", "task_cancel") else "fanout cancelled"
    if isinstance(out, BaseException):
        return f"fanout raised {type(out).__name__}: {out}"
    for name, value in out.items():
        if isinstance(value, BaseException):
            if isinstance(value, UserError) and request.job.fail == "value":
                continue
            if isinstance(value, UserTimeout) and request.job.fail == "timeout":
                continue
            if not isinstance(value, (UserError, UserTimeout)):
                continue  # a replica that died, was unreachable or full: reported per replica
            return f"fanout entry {name}: {type(value).__name__}: {value}"
        if value != request.job.answer():
            return f"fanout entry {name} answered {value!r}"
    return None


class DataPlaneSimulation:
    def __init__(self, seed: int, steps: int = 120, verbose: bool = False) -> None:
        self.seed = seed
        self.steps = steps
        self.verbose = verbose
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop()
        self.world = World(self.loop, self.rng)
        self.source = StaticSource()
        self.requests: list[Request] = []
        self.tasks: list[asyncio.Task] = []
        self.membership: dict[str, int] = {}  # backend -> version of its replica set
        self.errors: list[str] = []          # exceptions nobody saw (callbacks, tasks)
        self.log: list[str] = []
        self.stats: dict[str, int] = {}
        self.configs: dict[str, BackendConfig] = {}
        self.most_mcq: dict[str, int] = {}
        self.listed: dict[str, list[str]] = {}  # backend -> replica names published
        self.sessions: dict[str, tuple] = {}   # session id -> (replica, what could move it)
        self.tags = 0
        self.traffic_version = 0
        self.endpoint = EndpointInfo(name=ENDPOINT, route=None, methods=("GET",), traffic={"a": 1.0})
        self.routers: list[EndpointRouter] = []
        self.handles: list[Handle] = []

    # -- set-up -------------------------------------------------------------------------------------
    def _backend(self, name: str, replicas: int) -> None:
        config = BackendConfig(
            max_concurrent_queries=self.rng.choice([1, 1, 2, 3, 4]),
            max_queued_requests=self.rng.choice([2, 5, 10_000]),
            idempotent=self.rng.random() < 0.6,
            max_retries=self.rng.choice([0, 1, 3]))
        self.configs[name] = config
        self.most_mcq[name] = config.max_concurrent_queries
        self.listed[name] = []
        for _ in range(replicas):
            self._add_replica(name, publish=False)
        self._publish_replicas(name)
        self.source.set(keys.backend_config(name), BackendInfo(name, config))

    def _add_replica(self, backend: str, publish: bool = True) -> None:
        self.tags += 1
        replica = self.world.add_replica(backend, f"r{self.tags}", self.configs[backend].max_concurrent_queries)
        self.listed[backend].append(replica.name)
        if publish:
            self._publish_replicas(backend)

    def _publish_replicas(self, backend: str) -> None:
        self.membership[backend] = self.membership.get(backend, 0) + 1
        infos = tuple(self.world.replicas[n].info for n in self.listed[backend])
        self.source.set(keys.replicas(backend), infos)

    def _setup(self) -> None:
        rng = self.rng
        # most seeds mix every kind; some are mostly sessions (stateful replicas under load)
        self.mix = [40, 18, 12, 8, 12, 3] if rng.random() < 0.7 else [15, 5, 60, 10, 8, 2]
        self._backend("a", rng.randint(1, 3))
        traffic = {"a": 1.0}
        if rng.random() < 0.4:
            self._backend("b", rng.randint(1, 2))
            traffic = {"a": 0.6, "b": 0.4}
        shadows = {}
        if rng.random() < 0.3:
            self._backend("s", rng.randint(1, 2))
            shadows = {"s": rng.choice([0.5, 1.0])}
        batch = rng.random() < 0.3
        self.endpoint = dataclasses.replace(
            self.endpoint, traffic=traffic, shadows=shadows,
            batch_size=rng.choice([2, 4]) if batch else None, batch_timeout_s=0.01)
        self.source.set(keys.endpoint(ENDPOINT), self.endpoint)
        for _ in range(rng.randint(1, 3)):
            router = EndpointRouter(ENDPOINT, self.source, transport=self.world.transport, clock=self.world.clock)
            self.routers.append(router)
            self.handles.append(Handle(router))

    # -- the schedule ---------------------------------------------------------------------------------
    async def _schedule(self) -> None:
        rng = self.rng
        for step in range(self.steps):
            await self._sleep(rng.expovariate(1 / 0.01))
            roll = rng.random()
            if roll < 0.72:
                self._new_request()
            elif roll < 0.78:
                self._kill_replica()
            elif roll < 0.82:
                self._drain_replica()
            elif roll < 0.85:
                self._unavailable()
            elif roll < 0.88:
                self._add_some_replica()
            elif roll < 0.91:
                self._change_mcq()
            elif roll < 0.94:
                self._change_batching()
            elif roll < 0.97:
                self._change_traffic()
            else:
                self._slow()
            self.check_step()
        await self._quiesce()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _say(self, text: str) -> None:
        line = f"[{self.loop.now:9.4f}] {text}"
        self.log.append(line)
        if self.verbose:
            print(line)

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    # -- requests ---------------------------------------------------------------------------------------
    def _new_request(self) -> None:
        rng = self.rng
        number = len(self.requests)
        kind = rng.choices(["unary", "stream", "session", "shard", "nested", "fanout"], self.mix)[0]
        behaviour = rng.choices(["await", "cancel", "task_cancel", "deadline"], [62, 12, 10, 16])[0]
        if kind == "stream" and rng.random() < 0.25:
            behaviour = "abandon"
        fail = rng.choices([None, "value", "timeout"], [85, 10, 5])[0]
        service = rng.choice([0.001, 0.005, 0.02, 0.08])
        job = Job(number, service, fail, chunks=rng.randint(1, 5) if kind == "stream" else 0)
        request = Request(number, kind, behaviour, job, rng.randrange(len(self.routers)), self.loop.now)
        if behaviour == "deadline":
            request.timeout_s = rng.choice([0.0005, 0.004, 0.03, 0.5])
        if kind == "session":
            request.session = f"s{rng.randint(0, 4)}"
        if kind == "nested":
            candidates = [r for r in self.requests[-8:] if r.kind in ("unary", "session") and r.response is not None]
            request.dep = rng.choice(candidates) if candidates else None
            if request.dep is None:
                request.kind = "unary"
        self.requests.append(request)
        self._say(f"request {number} {request.kind}/{behaviour} service={service} fail={fail}"
                  f"{' dep=' + str(request.dep.number) if request.dep else ''}")
        self._count(f"kind:{request.kind}")
        self._count(f"behaviour:{behaviour}")
        task = self.loop.create_task(self._caller(request), name=f"caller-{number}")
        self.tasks.append(task)
        if behaviour in ("cancel", "task_cancel"):
            delay = rng.choice([0.0, 0.0005, 0.003, 0.02])
            self.loop.call_later(delay, self._cancel, request, task)

    def _cancel(self, request: Request, task: asyncio.Task) -> None:
        request.cancelled_at = self.loop.now
        if request.behaviour == "cancel" and request.response is not None:
            self._say(f"cancel() request {request.number}")
            request.response.cancel()
        elif not task.done():
            self._say(f"cancel the task awaiting request {request.number}")
            task.cancel()

    async def _caller(self, request: Request) -> None:
        handle = self.handles[request.router]
        options: dict[str, Any] = {}
        if request.timeout_s is not None:
            options["timeout_s"] = request.timeout_s
        if request.session is not None:
            options["session_id"] = request.session
        if request.kind == "shard":
            options["shard_key"] = f"k{request.number % 3}"
        if request.kind == "stream":
            options["stream"] = True
            options["method_name"] = "stream"
        if options:
            handle = handle.options(**options)
        try:
            if request.kind == "fanout":
                request.outcome = await handle.fanout_async(request.job, timeout_s=5.0)
                return
            args: tuple = (request.job,) if request.dep is None else (request.job, request.dep.response)
            try:
                request.response = handle.remote(*args)
                request.routed = request.response.request
            except BackPressureError as error:
                request.refused_at_submit = True
                request.outcome = error
                return
            if request.kind == "stream":
                await self._read_stream(request)
            else:
                request.outcome = await request.response
        except BaseException as error:  # noqa: BLE001 - the outcome the caller sees
            request.outcome = error
        finally:
            request.ended += 1
            self._say(f"request {request.number} ended: {_short(request.outcome)}")

    async def _read_stream(self, request: Request) -> None:
        stream = request.response
        assert isinstance(stream, ResponseStream)
        stop_after = self.rng.randint(0, max(0, request.job.chunks - 1)) if request.behaviour == "abandon" else None
        async for chunk in stream:
            request.chunks.append(chunk)
            if stop_after is not None and len(request.chunks) > stop_after:
                request.outcome = "abandoned"
                request.response = None  # dropped unread, without cancel()
                del stream
                gc.collect()
                return
        request.outcome = "complete"

    # -- replica events ----------------------------------------------------------------------------------
    def _live(self, backend: str | None = None) -> list[Any]:
        return [r for r in self.world.replicas.values() if r.alive and (backend is None or r.backend == backend)
                and r.name in self.listed[r.backend]]

    def _kill_replica(self) -> None:
        live = self._live()
        if not live:
            return
        replica = self.rng.choice(live)
        self._say(f"replica {replica.name} dies ({replica.admitted} calls in flight)")
        self._count("event:kill")
        replica.die()
        # the controller notices after a while: unlists it and starts a replacement
        self.loop.call_later(self.rng.choice([0.0, 0.01, 0.2]), self._replace, replica)

    def _replace(self, replica: Any) -> None:
        if replica.name in self.listed[replica.backend]:
            self.listed[replica.backend].remove(replica.name)
            self._add_replica(replica.backend)

    def _drain_replica(self) -> None:
        live = self._live()
        if not live:
            return
        replica = self.rng.choice(live)
        self._say(f"replica {replica.name} drains (scale-down)")
        self._count("event:drain")
        self.listed[replica.backend].remove(replica.name)
        if not self._live(replica.backend):
            self._add_replica(replica.backend, publish=False)
        self._publish_replicas(replica.backend)
        self.loop.call_later(self.rng.choice([0.0, 0.005]), self._start_drain, replica)

    def _start_drain(self, replica: Any) -> None:
        replica.draining = True
        self.loop.create_task(self._stop_when_idle(replica), name=f"drain-{replica.name}")

    async def _stop_when_idle(self, replica: Any) -> None:
        while replica.admitted:  # graceful shutdown: wait for every admitted call
            await asyncio.sleep(0.01)
        replica.die()

    def _unavailable(self) -> None:
        live = self._live()
        if not live:
            return
        replica = self.rng.choice(live)
        replica.unavailable_until = self.loop.now + self.rng.choice([0.01, 0.1])
        self._say(f"replica {replica.name} unreachable until {replica.unavailable_until:.3f}")
        self._count("event:unavailable")
        self.world.unreachable[replica.name] += 1

    def _add_some_replica(self) -> None:
        backend = self.rng.choice(sorted(self.configs))
        self._say(f"a replica of {backend} is added")
        self._add_replica(backend)

    def _change_mcq(self) -> None:
        backend = self.rng.choice(sorted(self.configs))
        mcq = self.rng.choice([1, 2, 4])
        self.configs[backend] = self.configs[backend].model_copy(update={"max_concurrent_queries": mcq})
        self.most_mcq[backend] = max(self.most_mcq[backend], mcq)
        self._say(f"backend {backend}: max_concurrent_queries={mcq}")
        self._count("event:mcq")
        for replica in self.world.replicas.values():
            if replica.backend == backend:
                replica.max_concurrent_queries = mcq
        self.source.set(keys.backend_config(backend), BackendInfo(backend, self.configs[backend]))

    def _change_batching(self) -> None:
        size = self.rng.choice([None, 2, 3])
        self.endpoint = dataclasses.replace(self.endpoint, batch_size=size)
        self._say(f"endpoint batch_size={size}")
        self._count("event:batching")
        self.source.set(keys.endpoint(ENDPOINT), self.endpoint)

    def _change_traffic(self) -> None:
        options = [{"a": 1.0}]
        if "b" in self.configs:
            options += [{"a": 0.5, "b": 0.5}, {"b": 1.0}]
        traffic = self.rng.choice(options)
        self.endpoint = dataclasses.replace(self.endpoint, traffic=traffic)
        self.traffic_version += 1
        self._say(f"traffic {traffic}")
        self._count("event:traffic")
        self.source.set(keys.endpoint(ENDPOINT), self.endpoint)

    def _slow(self) -> None:
        live = self._live()
        if live:
            replica = self.rng.choice(live)
            replica.slow_factor = self.rng.choice([1.0, 5.0, 30.0])
            self._say(f"replica {replica.name} runs {replica.slow_factor}x slower")

    async def _quiesce(self) -> None:
        """Heal everything and let every request end."""
        for replica in self.world.replicas.values():
            replica.unavailable_until = -1.0
            replica.slow_factor = 1.0
        for backend in self.configs:
            if not self._live(backend):
                self._add_replica(backend)
        end = self.loop.now + QUIESCE_S
        while self.loop.now < end and not all(t.done() for t in self.tasks):
            await asyncio.sleep(0.05)
        # shadows and cancelled calls end on their own; give them the same time
        while self.loop.now < end and any(r.admitted for r in self.world.replicas.values()):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # backoff timers, batch flushes
        gc.collect()
        self.check_idle()

    # -- invariants ---------------------------------------------------------------------------------------
    def fail(self, text: str) -> None:
        raise Violation(f"seed {self.seed} at t={self.loop.now:.4f}: {text}")

    def check_step(self) -> None:
        if self.errors:
            self.fail(f"an error no caller saw: {self.errors[0]}")
        for replica in self.world.replicas.values():
            if replica.most_admitted > self.most_mcq[replica.backend]:
                self.fail(f"replica {replica.name} ran {replica.most_admitted} calls at once; "
                          f"max_concurrent_queries was at most {self.most_mcq[replica.backend]}")
        for i, router in enumerate(self.routers):
            for name, load in router.statistics()["in_flight_by_replica"].items():
                backend = name.split(":", 1)[1].split("#", 1)[0]
                if load > self.most_mcq[backend] + 0:
                    self.fail(f"router {i} holds {load} slots on {name} (limit {self.most_mcq[backend]})")
            for backend, count in router.queue.counts().items():
                if backend in self.configs and count > self.configs[backend].max_queued_requests:
                    self.fail(f"router {i} queues {count} requests for {backend}, "
                              f"max_queued_requests={self.configs[backend].max_queued_requests}")
        self._check_sessions()

    def _check_sessions(self) -> None:
        """A session moves only when its replica died, left, was unreachable, or the replica
        set or traffic changed (rendezvous hashing may then pick another owner)."""
        arrivals = self.world.arrivals
        for session, name, movers in arrivals[self.seen_arrivals:]:
            if session is None:
                continue
            replica = self.world.replicas[name]
            previous = self.sessions.get(session)
            self.sessions[session] = (name, movers)
            if previous is not None and previous[0] != name and previous[1] == movers:
                old = self.world.replicas[previous[0]]
                if old.backend == replica.backend:
                    self.fail(f"session {session} moved from {previous[0]} to {name} though {previous[0]} "
                              "is alive and listed and nothing that could move it changed")
        self.seen_arrivals = len(arrivals)

    def check_idle(self) -> None:
        self.check_step()
        unfinished = [t.get_name() for t in self.tasks if not t.done()]
        if unfinished:
            self.fail(f"{len(unfinished)} requests never ended: {unfinished[:5]}")
        for request in self.requests:
            if request.ended != 1:
                self.fail(f"request {request.number} ended {request.ended} times")
            problem = request.allowed(self)
            if problem is not None:
                self.fail(f"request {request.number} ({request.kind}/{request.behaviour}): {problem}")
        for replica in self.world.replicas.values():
            if replica.admitted:
                self.fail(f"replica {replica.name} still counts {replica.admitted} admitted calls when idle")
        for i, router in enumerate(self.routers):
            stats = router.statistics()
            if stats["in_flight"] or stats["queued"] or len(router.queue):
                self.fail(f"router {i} is idle but holds {stats['in_flight']} slots and {stats['queued']} "
                          f"queued ({len(router.queue)} waiters): {stats['in_flight_by_replica']}; holding: "
                          f"{[(r, [q.number for q in self.requests if q.routed is r]) for r in router.ledger.running][:4]}")
            named = {keys.endpoint(ENDPOINT)} | {
                key for b in set(self.endpoint.traffic) | set(self.endpoint.shadows)
                for key in (keys.replicas(b), keys.backend_config(b))}
            extra = set(router.subscriptions) - named
            if len(extra) > 2 * KEEP_LEFT:
                self.fail(f"router {i} still follows {sorted(extra)}, which the endpoint no longer uses")
        self._check_outcomes()
        if self.world.stream_sends_after_chunk:
            self.fail(f"streams sent again after their first chunk: {self.world.stream_sends_after_chunk[:5]}")
        for key, runs in self.world.starts.items():
            number, backend = key[len("job-"):].split("@")
            request = self.requests[int(number)]
            if runs > 1 and request.kind != "fanout" and not self.configs[backend].idempotent:
                self.fail(f"request {number} ran {runs} times on backend {backend!r}, which is idempotent=False")

    def _check_outcomes(self) -> None:
        for i, router in enumerate(self.routers):
            counted = 0
            for figures in router.statistics()["backends"].values():
                counted += figures["requests"] + sum(
                    figures.get(k, 0) for k in ("timed_out", "cancelled", "expired", "refused", "dependency_failed"))
            reached = sum(1 for r in self.requests if r.router == i and (
                r.refused_at_submit or r.routed is not None and r.routed.backend is not None))
            if counted != reached:
                uncounted = [(r.number, r.kind, r.behaviour, r.routed.state.value, _short(r.outcome))
                             for r in self.requests if r.router == i and r.routed is not None
                             and r.routed.backend is not None and r.routed.outcome is None]
                tally = collections.Counter((r.routed.backend, r.routed.outcome.value) for r in self.requests
                                            if r.router == i and r.routed is not None and r.routed.outcome)
                self.fail(f"router {i} counted {counted} outcomes for {reached} requests; not counted: "
                          f"{uncounted[:5]}; by request: {dict(tally)}; router: "
                          f"{ {b: {k: v for k, v in f.items() if k != 'latency'} for b, f in router.statistics()['backends'].items()} }")

    # -- running ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        previous = loops.use_background_loop(self.loop)
        state = random.getstate()
        random.seed(self.seed)  # the routers' own draws (weights, shadows, policies) replay too
        self.loop.set_exception_handler(self._unseen_error)
        self.seen_arrivals = 0
        self.world.movers = lambda: (tuple(sorted(self.membership.items())), self.traffic_version,
                                     sum(self.world.unreachable.values()),
                                     sum(not r.alive or r.draining for r in self.world.replicas.values()))
        try:
            self._setup()
            self.loop.run_until_complete(self._schedule())
        except Stuck as exc:
            self.fail(str(exc))
        finally:
            loops.use_background_loop(previous)
            random.setstate(state)
            for router in self.routers:
                router.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            try:
                self.loop.run_until_complete(asyncio.sleep(0))
            except Exception:  # noqa: BLE001 - the run's verdict is already made
                pass
            self.loop.close()
        self.stats["requests"] = len(self.requests)
        return self.stats

    def _unseen_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        error = context.get("exception")
        message = context.get("message", "")
        if isinstance(error, asyncio.CancelledError):
            return
        self.errors.append(f"{message}: {type(error).__name__}: {error}" if error else message)


def _short(outcome: Any) -> str:
    """An outcome for the log, without the routers' random ids (so a replay's log is the same)."""
    if isinstance(outcome, BaseException):
        text = re.sub(r"\b(ep:)[0-9a-f]{8}:", r"\1*:", str(outcome))
        return f"{type(outcome).__name__}: {text[:90]}"
    return repr(outcome)[:90]


def run_seed(seed: int, steps: int = 120, verbose: bool = False) -> dict[str, int]:
    sim = DataPlaneSimulation(seed, steps=steps, verbose=verbose)
    try:
        return sim.run()
    except Violation:
        if verbose:
            print("\n".join(sim.log[-60:]))
        raise
