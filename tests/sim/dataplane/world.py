"""The data-plane simulator's world: virtual time, simulated replicas and their transport.

- ``VirtualTimeLoop`` is an asyncio loop whose clock is virtual: when nothing is ready it
  jumps to the next timer instead of sleeping (trio's ``autojump_clock``, kopf's looptime),
  so a seeded run is deterministic and takes no wall-clock time. ``SimClock`` reads it, and
  is the clock every router of the run is given.
- ``SimReplica`` runs "user code" (a ``Job``: how long it takes, what it returns or
  raises, how many chunks it streams) and enforces admission the way the replica actor
  does (``max_concurrent_queries`` across every router, nothing new while draining, nothing
  past its deadline). It can die, become unavailable for a while, or drain.
- ``SimTransport`` is the router's ``Transport`` over those replicas, with Ray's API
  surface where the router depends on it: a unary ref is awaitable and has a completion
  callback; a stream is a generator with no completion callback (Ray's
  ``ObjectRefGenerator`` has no ``_on_completed``); errors raised inside a replica arrive
  wrapped the way Ray wraps them (``RayTaskError(...).as_instanceof_cause()``); an actor
  that died raises ``ActorDiedError`` naming it; a cancelled call ends with
  ``TaskCancelledError``.

The world keeps what happened (every start of user code per request id, every chunk a
stream sent), and the simulator checks its invariants against that record.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import selectors
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError, TaskCancelledError

from serveplane.exceptions import ReplicaFullError, RequestTimeoutError, StreamingMethodError
from serveplane.records import ReplicaInfo, RequestMetadata
from serveplane.router.transport import RayTransport

WALL_EPOCH = 1_800_000_000.0  # virtual wall clock = this + virtual monotonic time


class Violation(AssertionError):
    """An invariant failed."""


class Stuck(Violation):
    """Nothing can move and nothing is scheduled: a wait that never ends."""


# -- virtual time --------------------------------------------------------------------------------
class _JumpingSelector(selectors.BaseSelector):
    """A selector that never blocks: a wait for ``timeout`` moves the virtual clock instead."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stuck("nothing is ready and no timer is set: some wait never ends")
        assert self.loop is not None
        # at least a microsecond: a step below the float's resolution would never move time
        self.loop.now += max(timeout, 1e-6)
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        self.now = 0.0
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.now


class SimClock:
    """The run's one clock: the loop's virtual time (and a wall clock offset from it)."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def monotonic(self) -> float:
        return self._loop.now

    def time(self) -> float:
        return WALL_EPOCH + self._loop.now


# -- user code ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What one request asks of user code (its only argument)."""

    request: int            # the simulator's request number
    service_s: float        # how long user code runs
    fail: str | None = None  # "value" -> ValueError, "timeout" -> the user's own TimeoutError
    chunks: int = 0          # a stream yields this many chunks, evenly spaced

    def answer(self) -> Any:
        return ("ok", self.request)

    def chunk(self, index: int) -> Any:
        return ("chunk", self.request, index)


class UserError(ValueError):
    pass


class UserTimeout(TimeoutError):
    """User code's own TimeoutError: never to be confused with a deadline."""


def ray_wrapped(error: BaseException, function: str = "handle_request") -> BaseException:
    """``error`` raised inside a replica's task, as Ray hands it to the caller."""
    return RayTaskError(function, "traceback (simulated)", error).as_instanceof_cause()


# -- replicas -------------------------------------------------------------------------------------
class SimReplica:
    def __init__(self, world: World, backend: str, tag: str, max_concurrent_queries: int) -> None:
        self.world = world
        self.backend = backend
        self.tag = tag
        self.name = f"serveplane:{backend}#{tag}"
        self.actor_id = hashlib.md5(self.name.encode()).hexdigest()
        self.info = ReplicaInfo(backend, tag, self.name, _ActorHandle(_ActorId(self.actor_id)),
                                max_concurrent_queries)
        self.max_concurrent_queries = max_concurrent_queries
        self.admitted = 0
        self.alive = True
        self.draining = False
        self.unavailable_until = -1.0
        self.slow_factor = 1.0
        self.calls: set[SimCall] = set()
        self.most_admitted = 0

    def died_error(self) -> ActorDiedError:
        error = ActorDiedError()
        error.actor_id = self.actor_id
        return error

    def unavailable(self) -> bool:
        return self.world.loop.now < self.unavailable_until

    def admit(self, meta: RequestMetadata, n: int) -> BaseException | None:
        """The replica actor's admission rule; an error means it refused (it did not run)."""
        if self.draining or self.admitted + n > self.max_concurrent_queries:
            why = "draining" if self.draining else f"at max_concurrent_queries={self.max_concurrent_queries}"
            return ray_wrapped(ReplicaFullError(f"replica {self.tag} of backend {self.backend!r} is {why}"))
        if meta.deadline is not None and self.world.clock.time() >= meta.deadline:
            return ray_wrapped(RequestTimeoutError(
                f"request {meta.request_id} reached replica {self.tag} after its deadline; it did not run"))
        self.admitted += n
        self.most_admitted = max(self.most_admitted, self.admitted)
        return None

    def leave(self, n: int) -> None:
        self.admitted -= n
        if self.admitted < 0:
            raise Violation(f"replica {self.name} admitted count went below zero")

    def die(self) -> None:
        self.alive = False
        for call in list(self.calls):
            self.world.trouble(call)
            call.end_with(self.died_error())

    def __repr__(self) -> str:
        return f"<SimReplica {self.name} admitted={self.admitted}{' draining' if self.draining else ''}" \
               f"{'' if self.alive else ' dead'}>"


@dataclass(frozen=True)
class _ActorId:
    value: str

    def hex(self) -> str:
        return self.value


@dataclass(frozen=True)
class _ActorHandle:
    _actor_id: _ActorId


# -- calls ----------------------------------------------------------------------------------------
class SimCall:
    """One actor call in flight on a replica: a unary call, a batch, or a stream."""

    def __init__(self, world: World, replica: SimReplica, meta: RequestMetadata, jobs: list[Any],
                 kind: str) -> None:
        self.world = world
        self.replica = replica
        self.meta = meta
        self.jobs = jobs      # a unary call or stream: [args tuple]; a batch: one args per call
        self.kind = kind      # "unary" | "batch" | "stream"
        self.done = False
        self.admitted = 0
        self.sleeps: list[tuple[asyncio.TimerHandle, asyncio.Future]] = []
        self.future: asyncio.Future = world.loop.create_future()
        self.chunks: collections.deque = collections.deque()  # stream: chunks not read yet
        self.chunk_waiter: asyncio.Future | None = None
        self.sent_chunks = 0
        self.callbacks: list[Callable[[Any], None]] = []

    # the call ends (once): its value or error, its admission given back
    def end_with(self, outcome: Any) -> None:
        if self.done:
            return
        self.done = True
        for timer, waiter in self.sleeps:
            timer.cancel()
            if not waiter.done():
                waiter.set_result(None)  # user code stops (its sleep raises CancelledError)
        self.replica.calls.discard(self)
        if self.admitted:
            self.replica.leave(self.admitted)
            self.admitted = 0
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
            self.future.exception()  # retrieved: a call nobody awaits is not a loop warning
        else:
            self.future.set_result(outcome)
        for callback in self.callbacks:
            self.world.loop.call_soon(callback, outcome)
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter, self.chunk_waiter = self.chunk_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push_chunk(self, chunk: Any) -> None:
        self.chunks.append(chunk)
        self.sent_chunks += 1
        self._wake_reader()


class SimRef:
    """A unary call's ``ObjectRef``: awaitable; cancelling an awaiter leaves the call running."""

    def __init__(self, call: SimCall) -> None:
        self.call = call

    def __await__(self) -> Any:
        return asyncio.shield(self.call.future).__await__()


class ResolvedRef:
    """``transport.put(value)``: a ref that already holds a value."""

    def __init__(self, world: World, value: Any) -> None:
        self.future: asyncio.Future = world.loop.create_future()
        self.future.set_result(value)

    def __await__(self) -> Any:
        return asyncio.shield(self.future).__await__()


class SimStream:
    """A streaming call, as Ray's ``ObjectRefGenerator``: no completion callback."""

    def __init__(self, call: SimCall) -> None:
        self.call = call


# -- the transport --------------------------------------------------------------------------------
class SimTransport:
    """``Transport`` over the world's replicas (every call the routers make)."""

    classify = staticmethod(RayTransport.classify)

    def __init__(self, world: World) -> None:
        self.world = world

    def _replica(self, info: ReplicaInfo) -> SimReplica:
        return self.world.replicas[info.actor_name]

    def _start(self, info: ReplicaInfo, meta: RequestMetadata, jobs: list[Any], kind: str) -> SimCall:
        replica = self._replica(info)
        call = SimCall(self.world, replica, meta, jobs, kind)
        self.world.calls_made += 1
        # the call reaches the replica on the next turn of the loop (an RPC takes a moment)
        self.world.loop.call_soon(self.world.arrive, call)
        return call

    def send(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> SimRef:
        return SimRef(self._start(replica, meta, [(args, kwargs)], "unary"))

    def send_batch(self, replica: ReplicaInfo, meta: RequestMetadata, calls: list[tuple[tuple, dict]]) -> SimRef:
        return SimRef(self._start(replica, meta, list(calls), "batch"))

    def send_stream(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> SimStream:
        return SimStream(self._start(replica, meta, [(args, kwargs)], "stream"))

    def pull_stream(self, replica: ReplicaInfo, stream_id: str) -> Any:
        raise Violation("the simulated replicas never hand off a body")

    async def next_chunk(self, stream: SimStream) -> Any:
        call = stream.call
        while True:
            if call.chunks:
                return call.chunks.popleft()
            if call.done:
                error = call.future.exception()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            call.chunk_waiter = self.world.loop.create_future()
            await call.chunk_waiter

    def next_chunk_sync(self, stream: SimStream, timeout: float | None) -> Any:
        raise Violation("the simulation's callers are async; a sync read would block the loop")

    def put(self, value: Any) -> ResolvedRef:
        return ResolvedRef(self.world, value)

    def cancel(self, ref: Any) -> None:
        call = ref.call if isinstance(ref, (SimRef, SimStream)) else None
        if call is None:
            return
        self.world.cancels += 1
        call.end_with(TaskCancelledError())

    def get(self, ref: Any, timeout: float | None) -> Any:
        raise Violation("the simulation's callers are async; ray.get would block the loop")

    def on_completed(self, ref: Any, callback: Callable[[Any], None]) -> None:
        if isinstance(ref, SimStream):
            # Ray's ObjectRefGenerator has no _on_completed: the real transport fails here too
            raise AttributeError("'ObjectRefGenerator' object has no attribute '_on_completed'")
        if isinstance(ref, ResolvedRef):
            self.world.loop.call_soon(callback, ref.future.result())
            return
        call = ref.call
        if call.done:
            self.world.loop.call_soon(callback, _outcome(call.future))
        else:
            call.callbacks.append(callback)


def _outcome(future: asyncio.Future) -> Any:
    error = future.exception()
    return error if error is not None else future.result()


# -- the world ------------------------------------------------------------------------------------
class World:
    """Replicas, what ran on them, and the replica side of every call."""

    def __init__(self, loop: VirtualTimeLoop, rng: Any) -> None:
        self.loop = loop
        self.clock = SimClock(loop)
        self.rng = rng
        self.replicas: dict[str, SimReplica] = {}
        self.transport = SimTransport(self)
        self.starts: collections.Counter[str] = collections.Counter()  # request id -> user code runs
        self.stream_sends_after_chunk: list[str] = []
        self.chunked: set[str] = set()  # request ids whose stream delivered a chunk
        self.calls_made = 0
        self.cancels = 0
        # (session id, replica, what could have moved it) of each admitted call
        self.arrivals: list[tuple[str | None, str, Any]] = []
        self.movers: Callable[[], Any] = lambda: None
        self.troubled: set[int] = set()
        self.refused_jobs: set[int] = set()  # requests a replica refused (full, draining, late)  # requests with a call its replica failed (died, unreachable)
        self.unreachable: collections.Counter[str] = collections.Counter()  # replica -> times
        self.log: list[str] = []

    def add_replica(self, backend: str, tag: str, max_concurrent_queries: int) -> SimReplica:
        replica = SimReplica(self, backend, tag, max_concurrent_queries)
        self.replicas[replica.name] = replica
        return replica

    # a call reaches its replica
    def arrive(self, call: SimCall) -> None:
        if call.done:
            return  # cancelled on the way
        replica = call.replica
        if not replica.alive:
            self.trouble(call)
            call.end_with(replica.died_error())
            return
        if replica.unavailable():
            self.trouble(call)
            call.end_with(ActorUnavailableError("unreachable (simulated)", bytes.fromhex(replica.actor_id)))
            return
        if call.kind == "stream" and not call.meta.is_shadow and call.meta.request_id in self.chunked:
            self.stream_sends_after_chunk.append(call.meta.request_id)
        n = len(call.jobs)
        refusal = replica.admit(call.meta, n)
        if refusal is not None:
            if not call.meta.is_shadow:
                self.refused_jobs.update(_jobs_in(call))
            call.end_with(refusal)
            return
        call.admitted = n
        replica.calls.add(call)
        if not call.meta.is_shadow:
            self.arrivals.append((call.meta.session_id, replica.name, self.movers()))
        self.loop.create_task(self._run(call), name=f"replica-{call.meta.request_id}")

    def trouble(self, call: SimCall) -> None:
        if not call.meta.is_shadow:
            self.troubled.update(_jobs_in(call))

    async def _resolve(self, args: tuple) -> tuple:
        """Ray resolves ObjectRef arguments before the task runs; a failed one fails the task."""
        resolved = []
        for arg in args:
            if isinstance(arg, (SimRef, ResolvedRef)):
                future = arg.call.future if isinstance(arg, SimRef) else arg.future
                try:
                    arg = await asyncio.shield(future)
                except BaseException as error:  # noqa: BLE001 - as Ray raises it in the task
                    if isinstance(error, RayTaskError):
                        raise error
                    raise ray_wrapped(error) from None
            resolved.append(arg)
        return tuple(resolved)

    async def _run(self, call: SimCall) -> None:
        try:
            results = []
            for args, _kwargs in call.jobs:
                try:
                    args = await self._resolve(args)
                except BaseException as error:  # noqa: BLE001
                    if call.kind == "batch":
                        results.append((False, error))
                        continue
                    raise
                job = _job_of(args)
                if not call.meta.is_shadow:
                    self.starts[_request_id(call, job)] += 1
                if call.kind != "stream" and call.meta.method_name == "stream":
                    raise ray_wrapped(StreamingMethodError(
                        f"method 'stream' of backend {call.replica.backend!r} is a generator"))
                if call.kind == "stream":
                    await self._stream(call, job)
                    call.end_with(None)
                    return
                await self._sleep(call, job.service_s)
                if job.fail == "value":
                    error: BaseException = UserError(f"user code failed on request {job.request}")
                elif job.fail == "timeout":
                    error = UserTimeout(f"user code timed out on request {job.request}")
                else:
                    results.append((True, _nested_answer(job, args)))
                    continue
                if call.kind == "batch":
                    results.append((False, error))
                else:
                    raise ray_wrapped(error)
            call.end_with(results if call.kind == "batch" else results[0][1])
        except BaseException as error:  # noqa: BLE001 - the call's outcome
            call.end_with(error)

    async def _sleep(self, call: SimCall, seconds: float) -> None:
        waiter = self.loop.create_future()
        timer = self.loop.call_later(seconds * call.replica.slow_factor, _set_done, waiter)
        call.sleeps.append((timer, waiter))
        await waiter
        if call.done:
            raise asyncio.CancelledError()

    async def _stream(self, call: SimCall, job: Job) -> None:
        gap = job.service_s / max(1, job.chunks)
        for index in range(job.chunks):
            await self._sleep(call, gap)
            if call.done:
                return
            call.push_chunk(job.chunk(index))
            if not call.meta.is_shadow:
                self.chunked.add(call.meta.request_id)
            if job.fail == "value" and index == job.chunks // 2:
                raise ray_wrapped(UserError(f"user stream failed on request {job.request}"), "handle_stream")


def _jobs_in(call: SimCall) -> list[int]:
    return [arg.request for args, _kwargs in call.jobs for arg in args if isinstance(arg, Job)]


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _job_of(args: Sequence[Any]) -> Job:
    for arg in args:
        if isinstance(arg, Job):
            return arg
    raise Violation(f"a call carried no Job: {args!r}")


def _request_id(call: SimCall, job: Job) -> str:
    return f"job-{job.request}@{call.replica.backend}"


def _nested_answer(job: Job, args: tuple) -> Any:
    extra = [a for a in args if not isinstance(a, Job)]
    return job.answer() if not extra else ("ok", job.request, tuple(extra))
