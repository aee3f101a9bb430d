"""The replica actor: runs one copy of a backend's user code.

Invariants:
- ``handle_request`` never lets an application error leave the actor unhealthy; the error
  travels to the caller and the replica keeps serving.
- ``prepare_for_shutdown`` takes nothing away from in-flight work: it refuses new callers
  and waits (up to the graceful timeout) until every call, stream, handed-off body and
  worker-pool call ended and no caller arrived for a quiet period (``drain.py``); only then
  may the controller kill the actor.
- Sync user methods run in a thread pool so that ``max_concurrent_queries`` means what it
  says and a slow sync call does not stall control calls (health, metrics, drain). A sync
  ``check_health`` runs on a thread of its own: it never queues behind user work.
- Admission, deadlines and metrics read the time through one injected clock.
- A request from the HTTP proxy (``meta.http``) reaches only the methods the backend exposes
  over HTTP (``serveplane/exposure.py``); anything else is ``MethodNotExposedError`` (404).
- A call reaches user code in the backend's request convention (``convention.py``): a
  classic backend gets one request object per call, converted before batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import cloudpickle

from serveplane import tracing
from serveplane.clock import SYSTEM_CLOCK, Clock
from serveplane.config import BackendConfig
from serveplane.context import (
    ReplicaContext,
    RequestContext,
    current_context,
    current_request,
    current_session_id,
    set_replica_context,
)
from serveplane.exceptions import (ReplicaFullError, RequestCancelledError, RequestTimeoutError,
                                   StreamingMethodError)
from serveplane.exposure import check_name_over_http, exposed_over_http, not_exposed
from serveplane.http.request import HTTPRequest
from serveplane.http.starlette_request import to_starlette, wants_starlette
from serveplane.records import RequestMetadata
from serveplane.replica.batching import Batcher
from serveplane.replica.convention import RequestConvention, classic_request, unwrap
from serveplane.replica.metrics import ReplicaMetrics
from serveplane.deadline import Deadline, DeadlinePassed
from serveplane.replica.drain import InFlight
from serveplane.replica.streaming import (
    Handoffs,
    coalesce,
    StreamHandoff,
    Whole,
    is_streaming_response,
    iterate,
    stream_start,
    streams,
)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))


class ReplicaActor:
    """Wrapped with ``ray.remote`` by ``ReplicaActorWrapper``; never constructed directly."""

    def __init__(self, backend: str, replica_tag: str, code_blob: bytes, init_blob: bytes,
                 config: dict[str, Any], version: str, config_version: str | None = None,
                 namespace: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        tracing.setup_process()
        self._clock = clock
        self._backend = backend
        # before user code runs: serveplane.connect() in a backend attaches to its own instance
        set_replica_context(ReplicaContext(backend, replica_tag, namespace))
        self._replica_tag = replica_tag
        self._version = version
        self._config_version = config_version
        self._config = BackendConfig.model_validate(config)
        func_or_class, self._convention = unwrap(cloudpickle.loads(code_blob))
        self._starlette_methods: dict[str, bool] = {}
        init_args, init_kwargs = cloudpickle.loads(init_blob)
        self._executor = self._new_executor()
        # health never queues behind user work on the pool (a long sync call with
        # max_concurrent_queries=1 would time the check out and get the replica killed)
        self._health_executor = ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix=f"health-{backend}")
        if inspect.isclass(func_or_class):
            self._callable: Any = func_or_class(*init_args, **init_kwargs)
            self._is_function = False
        else:
            self._callable = func_or_class
            self._is_function = True
        # The initial user_config is applied by ready(), which can await an async
        # reconfigure (a constructor cannot); the controller publishes a replica only after.
        self._initial_user_config_pending = self._config.user_config is not None
        self._check_user_config_target()
        self._metrics = ReplicaMetrics(clock=clock.monotonic)
        self._accept_batchers: dict[str, Batcher] = {}
        self._inflight = InFlight(clock)
        self._refused = 0
        self._cancelled = 0  # calls whose caller cancelled them while they ran
        self._streaming_methods: dict[str, bool] = {}
        self._handoffs = Handoffs(self._inflight.body_ended)

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=min(64, self._config.max_concurrent_queries),
                                  thread_name_prefix=f"replica-{self._backend}")

    # -- control ---------------------------------------------------------------
    async def ready(self) -> dict[str, Any]:
        import ray

        if self._initial_user_config_pending:
            await self._apply_user_config(self._config.user_config)
            self._initial_user_config_pending = False
        return {
            "replica_tag": self._replica_tag,
            "version": self._version,
            "config_version": self._config_version,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def _check_user_config_target(self) -> None:
        if (self._config.user_config is not None and not self._is_function
                and getattr(self._callable, "reconfigure", None) is None):
            raise ValueError(
                f"backend {self._backend!r} has a user_config but its class defines no "
                "reconfigure(user_config) method; add one or drop user_config")

    async def _apply_user_config(self, user_config: Any) -> None:
        reconfigure = getattr(self._callable, "reconfigure", None)
        if user_config is None or reconfigure is None:
            return  # nothing to apply (functions take no user_config)
        if _is_async(reconfigure):
            await reconfigure(user_config)
        else:
            await asyncio.get_running_loop().run_in_executor(self._executor, reconfigure, user_config)

    async def reconfigure(self, config: dict[str, Any], config_version: str | None = None) -> None:
        """Apply a config change in place: ``user_config`` (the user's ``reconfigure``),
        ``max_batch_size`` and ``batch_wait_timeout`` (batchers), ``max_concurrent_queries``
        (the worker pool). The replica then reports ``config_version``."""
        new = BackendConfig.model_validate(config)
        old, self._config = self._config, new
        if new.user_config != old.user_config or self._initial_user_config_pending:
            self._check_user_config_target()
            await self._apply_user_config(new.user_config)
            self._initial_user_config_pending = False
        if (new.max_batch_size, new.batch_wait_timeout) != (old.max_batch_size, old.batch_wait_timeout):
            for batcher in self._accept_batchers.values():
                batcher.max_batch_size = new.max_batch_size or 1
                batcher.batch_wait_timeout_s = new.batch_wait_timeout
        if new.max_concurrent_queries != old.max_concurrent_queries:
            previous, self._executor = self._executor, self._new_executor()
            previous.shutdown(wait=False)  # running calls finish on the old pool
        self._config_version = config_version

    async def check_health(self) -> None:
        check = getattr(self._callable, "check_health", None)
        if check is None or self._is_function:
            return
        if _is_async(check):
            await check()
        else:
            await asyncio.get_running_loop().run_in_executor(self._health_executor, check)

    async def prepare_for_shutdown(self, timeout_s: float) -> int:
        """Refuse new callers and wait until drained (``drain.py``) or ``timeout_s`` passed;
        returns how much was still in flight (0: drained)."""
        return await self._inflight.wait_drained(timeout_s)

    async def get_metrics(self) -> dict[str, Any]:
        return self._metrics.snapshot(draining=self._inflight.draining)

    # -- data ------------------------------------------------------------------
    def _resolve(self, method_name: str, http: bool = False) -> Callable[..., Any]:
        if http:
            check_name_over_http(method_name)
        if self._is_function:
            if method_name not in ("__call__", "", None):
                if http:
                    raise not_exposed(method_name)
                raise AttributeError(
                    f"backend {self._backend!r} is a function; it has no method {method_name!r}")
            return self._callable
        if method_name.startswith("_") and method_name != "__call__":
            raise AttributeError(
                f"method {method_name!r} of backend {self._backend!r} is private; "
                "only public methods and __call__ can be called")
        method = getattr(self._callable, method_name, None)
        if method is None or not callable(method):
            if http:
                raise not_exposed(method_name)
            raise AttributeError(f"backend {self._backend!r} has no method {method_name!r}")
        # the classic (1.x) convention keeps 1.x's rule: every public method over HTTP (never
        # reconfigure, check_health or private names: check_name_over_http refused them above)
        if http and self._convention is not RequestConvention.CLASSIC \
                and not exposed_over_http(method_name, method, self._config.http_methods):
            raise not_exposed(method_name)
        return method

    async def _call(self, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with tracing.user_code_span(method) if tracing.ENABLED else tracing.NO_SPAN:
            if _is_async(method):
                return await method(*args, **kwargs)
            return await self._run_sync(functools.partial(method, *args, **kwargs))

    def _run_sync(self, fn: Callable[[], Any]) -> Any:
        """``fn`` on the worker pool, with the request's contextvars. Cancelling the await
        before a worker took it means it never runs. It is in flight (the drain waits for
        it) until its worker returned, even when its caller stopped waiting."""
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        future = self._executor.submit(ctx.run, fn)
        inflight = self._inflight
        inflight.pool_started()

        def finished(_: Future) -> None:
            try:
                loop.call_soon_threadsafe(inflight.pool_done)
            except RuntimeError:  # the loop closed (the replica is going away)
                pass

        future.add_done_callback(finished)
        return asyncio.wrap_future(future, loop=loop)

    # -- admission --------------------------------------------------------------------------
    def _admit(self, meta: RequestMetadata, n: int = 1) -> None:
        """Take ``n`` of this replica's ``max_concurrent_queries`` slots, or refuse at once
        (every router together may not exceed it, handed-off bodies included; a draining
        replica takes nothing new)."""
        inflight = self._inflight
        inflight.arrived()
        limit = self._config.max_concurrent_queries
        if inflight.draining or inflight.admitted + inflight.bodies + n > limit:
            self._refused += n
            why = ("draining (it is being stopped); the request did not run and goes to another "
                   "replica" if inflight.draining else
                   f"at max_concurrent_queries={limit} across all routers; the request did not run")
            raise ReplicaFullError(f"replica {self._replica_tag} of backend {self._backend!r} "
                                   f"(endpoint {meta.endpoint!r}) is {why}")
        if meta.deadline is not None and self._clock.time() >= meta.deadline:
            raise RequestTimeoutError(
                f"request {meta.request_id} of endpoint {meta.endpoint!r} reached replica "
                f"{self._replica_tag} of backend {self._backend!r} "
                f"{self._clock.time() - meta.deadline:.3f}s after its deadline; it did not run")
        inflight.take(n)

    def _leave(self, n: int = 1) -> None:
        self._inflight.leave(n)

    async def handle_request(self, meta: RequestMetadata | list, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(meta, RequestMetadata):  # routers send the fields as a list (faster)
            meta = RequestMetadata(*meta)
        self._admit(meta)
        try:
            return await self._run_one(meta, args, kwargs)
        finally:
            self._leave()

    async def _run_one(self, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any:
        with _Running(self, meta) as running:
            return await self._run_traced(meta, args, kwargs, running)

    async def _run_traced(self, meta: RequestMetadata, args: tuple, kwargs: dict, running: _Running) -> Any:
        span = tracing.start_replica(meta, self._backend, self._replica_tag) if tracing.ENABLED else None
        ok = False
        try:
            method = self._resolve(meta.method_name, meta.http)
            if self._streams(meta.method_name, method):
                raise StreamingMethodError(
                    f"method {meta.method_name!r} of backend {self._backend!r} is a generator: "
                    "call it with handle.options(stream=True).remote(...) and iterate the stream")
            args, kwargs = self._convert(meta, method, args, kwargs)
            if meta.deadline is None:
                result = await self._invoke(meta, method, args, kwargs)
            else:
                with _deadline_scope(meta, self._clock, self._backend):
                    result = await self._invoke(meta, method, args, kwargs)
            if is_streaming_response(result):
                if meta.http:  # the proxy pulls the body with one more call (pull_stream)
                    self._inflight.body_kept()  # in flight until pulled to its end, or expired
                    result = StreamHandoff(self._handoffs.keep(result.body_iterator, meta),
                                           stream_start(result))
                else:
                    result = await _collect(result)
            ok = running.ok = True
            return result
        finally:
            if span is not None:
                span.end(ok)

    def _invoke(self, meta: RequestMetadata, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if getattr(method, "_serveplane_accept_batch", False):
            return self._accept_batcher(meta.method_name, method).submit(_one_arg(args, kwargs, meta.method_name))
        return self._call(method, args, kwargs)

    def _streams(self, name: str, method: Callable[..., Any]) -> bool:
        known = self._streaming_methods.get(name)
        if known is None:
            known = self._streaming_methods[name] = streams(method)
        return known

    async def handle_stream(self, meta: RequestMetadata | list, *args: Any, **kwargs: Any) -> Any:
        """A stream: one Ray streaming-generator call; see ``replica/streaming.py``."""
        if not isinstance(meta, RequestMetadata):
            meta = RequestMetadata(*meta)
        self._admit(meta)
        try:
            with _Running(self, meta) as running:
                # closed by its caller (GeneratorExit at the yield): every generator below,
                # the user's too, is closed now, not when the collector finds it
                async with contextlib.aclosing(self._stream(meta, args, kwargs)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                running.ok = True
        finally:
            self._leave()

    async def _stream(self, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any:
        method = self._resolve(meta.method_name, meta.http)
        args, kwargs = self._convert(meta, method, args, kwargs)
        with _deadline_scope(meta, self._clock, self._backend):
            if self._streams(meta.method_name, method):
                # calling a generator function runs none of its code: no worker needed
                produced = iterate(method(*args, **kwargs), self._run_sync)
                async with contextlib.aclosing(coalesce(produced)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            else:
                result = await self._call(method, args, kwargs)
                if is_streaming_response(result):
                    yield stream_start(result)
                    async with contextlib.aclosing(coalesce(result.body_iterator)) as chunks:
                        async for chunk in chunks:
                            yield chunk
                else:
                    yield Whole(result)

    async def pull_stream(self, stream_id: str) -> Any:
        """The body of a ``StreamHandoff`` this replica answered (streaming call), under its
        request's deadline; it stays in flight (admission, drain) until it ended here."""
        self._inflight.arrived()
        body, meta = self._handoffs.take(stream_id)
        chunks = coalesce(body)
        try:
            with _deadline_scope(meta, self._clock, self._backend):
                async for chunk in chunks:
                    yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            raise
        finally:
            try:
                await chunks.aclose()  # stops its producer task, which reads the body
                await body.aclose()
            finally:
                self._handoffs.ended()

    async def data_path_stats(self) -> dict[str, int]:
        """Admission, drain and cancellation counters (tests, debugging)."""
        inflight = self._inflight
        return {"admitted": inflight.admitted, "refused": self._refused,
                "cancelled": self._cancelled, "handoffs": len(self._handoffs),
                "bodies": inflight.bodies, "pool": inflight.pool}

    def _convert(self, meta: RequestMetadata, method: Callable[..., Any], args: tuple,
                 kwargs: dict) -> tuple[tuple, dict]:
        """A call's arguments as the backend's request convention hands them to user code."""
        if self._convention is RequestConvention.CLASSIC:
            return (classic_request(args, kwargs, meta.http_method, meta.http_headers),), {}
        if args and isinstance(args[0], HTTPRequest):
            wants = self._starlette_methods.get(meta.method_name)
            if wants is None:
                wants = self._starlette_methods[meta.method_name] = wants_starlette(method)
            if wants:
                return (to_starlette(args[0]), *args[1:]), kwargs
        return args, kwargs

    def _list_caller(self, method: Callable[..., Any]) -> Callable[[list[Any]], Any]:
        async def call_list(items: list[Any]) -> list[Any]:
            return await self._call(method, (items,), {})

        return call_list

    def _accept_batcher(self, name: str, method: Callable[..., Any]) -> Batcher:
        batcher = self._accept_batchers.get(name)
        if batcher is None:
            batcher = Batcher(self._list_caller(method), f"{self._backend}.{name}",
                              self._config.max_batch_size or 1, self._config.batch_wait_timeout)
            self._accept_batchers[name] = batcher
        return batcher

    async def handle_batch(self, meta: RequestMetadata, calls: list[tuple[tuple, dict]]) -> list[Any]:
        """Router-side batching: run a gathered list of calls in one actor call.

        Returns one entry per call: ``(True, value)`` or ``(False, exception)``, so one
        caller's error never fails the others.
        """
        if not isinstance(meta, RequestMetadata):
            meta = RequestMetadata(*meta)
        self._admit(meta, len(calls))
        try:
            return await self._run_batch(meta, calls)
        finally:
            self._leave(len(calls))

    async def _run_batch(self, meta: RequestMetadata, calls: list[tuple[tuple, dict]]) -> list[Any]:
        method = self._resolve(meta.method_name, meta.http)
        calls = [self._convert(meta, method, a, k) for a, k in calls]
        batch_fn = getattr(method, "_serveplane_batch", None)
        if batch_fn is not None or getattr(method, "_serveplane_accept_batch", False):
            self._metrics.begin()
            started = self._clock.monotonic()
            try:
                if batch_fn is not None:
                    return await batch_fn.run_gathered(self._callable, calls)
                items = [_one_arg(a, k, meta.method_name) for a, k in calls]
                # the router's batch, split by the backend's max_batch_size when it has one
                size = self._config.max_batch_size or max(1, len(items))
                return await Batcher(self._list_caller(method), f"{self._backend}.{meta.method_name}",
                                     size, 0.0).run_gathered(items)
            finally:
                self._metrics.end(True, self._clock.monotonic() - started, None)

        async def one(args: tuple, kwargs: dict) -> tuple[bool, Any]:
            try:
                return True, await self._run_one(meta, args, kwargs)
            except asyncio.CancelledError:
                if _cancelling():
                    raise  # the whole batch call is cancelled
                # cancelled from inside its own user code: its batch-mates carry on
                return False, RequestCancelledError(
                    f"a call of request {meta.request_id} (endpoint {meta.endpoint!r}, backend "
                    f"{self._backend!r}) was cancelled inside its user code; its batch-mates "
                    "were not affected")
            except Exception as exc:  # noqa: BLE001 - returned to its own caller
                return False, exc

        return list(await asyncio.gather(*(one(a, k) for a, k in calls)))


class _Running:
    """One call's bookkeeping in its replica: metrics, the request's contextvars (nested
    handle calls see them), and on cancellation the cancelling of the handle calls it made."""

    __slots__ = ("replica", "meta", "context", "tokens", "started", "ok")

    def __init__(self, replica: ReplicaActor, meta: RequestMetadata) -> None:
        self.replica = replica
        self.meta = meta
        self.ok = False

    def __enter__(self) -> _Running:
        self.started = self.replica._clock.monotonic()
        self.replica._metrics.begin()
        meta = self.meta
        self.context = RequestContext(meta)
        self.tokens = (current_context.set(self.context), current_request.set(meta),
                       current_session_id.set(meta.session_id))
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        # a stream closed before its end (its caller went away) is cancelled too
        if kind is not None and issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
            self.replica._cancelled += 1
            self.context.cancel_children()
        ctx, req, sess = self.tokens
        # a stream may be closed from another context than the one that ran it
        _reset_quietly((current_session_id, sess), (current_request, req), (current_context, ctx))
        self.replica._metrics.end(self.ok, self.replica._clock.monotonic() - self.started,
                                  self.meta.session_id)


def _cancelling() -> bool:
    """Is the running task being cancelled from outside (not a CancelledError its own code
    raised)? Without ``Task.cancelling`` (Python 3.10) assume it is."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is None or bool(cancelling())


def _reset_quietly(*pairs: tuple[contextvars.ContextVar, contextvars.Token]) -> None:
    for var, token in pairs:
        try:
            var.reset(token)
        except ValueError:
            pass  # another context: the values die with the one that set them


# The caller cancels a call at its deadline; the replica stops user code this much later
# by itself (a caller that went away), so the two never race.
DEADLINE_GRACE_S = 1.0


@contextlib.contextmanager
def _deadline_scope(meta: RequestMetadata, clock: Clock, backend: str) -> Any:
    """User code past the request's deadline is cancelled; its caller gets
    RequestTimeoutError. The user's own TimeoutError passes through as it is."""
    if meta.deadline is None:
        yield
        return
    try:
        with Deadline(meta.deadline + DEADLINE_GRACE_S - clock.time()):
            yield
    except DeadlinePassed:
        raise RequestTimeoutError(
            f"request {meta.request_id} of endpoint {meta.endpoint!r} passed its deadline while "
            f"running on backend {backend!r}; it was cancelled") from None


async def _collect(result: Any) -> Any:
    """A StreamingResponse's whole body (an ordinary call of a handle, not over HTTP)."""
    chunks = []
    async for chunk in result.body_iterator:
        chunks.append(chunk)
    if chunks and all(isinstance(c, str) for c in chunks):
        return "".join(chunks)
    return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)


def _one_arg(args: tuple, kwargs: dict, name: str) -> Any:
    if kwargs or len(args) != 1:
        raise TypeError(f"batched method {name!r} takes exactly one positional argument per call")
    return args[0]
