"""A fake transport and helpers: the whole router without Ray.

``FakeTransport.send`` records each call and returns a ``FakeRef`` that the test answers
(``answer`` / ``fail``) whenever it likes, or that ``auto`` answers at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayTaskError, TaskCancelledError

from serveplane.config import BackendConfig
from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, RequestMetadata, keys
from serveplane.router.transport import RayTransport


class FakeRef:
    def __init__(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> None:
        self.replica = replica
        self.meta = meta
        self.args = args
        self.kwargs = kwargs
        self.future: concurrent.futures.Future = concurrent.futures.Future()

    def answer(self, value: Any) -> None:
        self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        self.future.set_exception(error)

    def die(self) -> None:
        """The replica died under this call."""
        self.fail(actor_died(self.replica))

    def unavailable(self) -> None:
        """The replica is unreachable for now (the call may or may not have run)."""
        self.fail(ActorUnavailableError("connection lost", bytes.fromhex(actor_id(self.replica))))

    def __await__(self) -> Any:
        # like a Ray ObjectRef: cancelling an awaiter does not cancel the call
        loop = asyncio.get_running_loop()
        mirror = loop.create_future()

        def copy(done: concurrent.futures.Future) -> None:
            loop.call_soon_threadsafe(_copy_into, done, mirror)

        self.future.add_done_callback(copy)
        return mirror.__await__()

    def __repr__(self) -> str:
        return f"<FakeRef {self.replica.replica_tag} {self.meta.method_name}{self.args}>"


def _copy_into(done: concurrent.futures.Future, mirror: asyncio.Future) -> None:
    if mirror.done():
        return
    if done.exception() is not None:
        mirror.set_exception(done.exception())
    else:
        mirror.set_result(done.result())


class PutRef:
    """``transport.put(value)``: a ref that already holds ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.future.set_result(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PutRef) and other.value == self.value

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<PutRef {self.value!r}>"


class FakeTransport:
    def __init__(self, auto: Callable[[FakeRef], Any] | None = None) -> None:
        self.calls: list[FakeRef] = []
        self.cancelled: list[FakeRef] = []
        self.auto = auto

    def send(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> FakeRef:
        ref = FakeRef(replica, meta, args, kwargs)
        self.calls.append(ref)
        if self.auto is not None:
            try:
                ref.answer(self.auto(ref))
            except Exception as exc:  # noqa: BLE001 - the fake replica's "user code" raised
                ref.fail(exc)
        return ref

    def send_batch(self, replica: ReplicaInfo, meta: RequestMetadata, calls: list) -> FakeRef:
        return self.send(replica, meta, (calls,), {})

    @staticmethod
    def get(ref: FakeRef, timeout: float | None) -> Any:
        try:
            return ref.future.result(timeout)
        except concurrent.futures.TimeoutError:
            if not ref.future.done():
                raise GetTimeoutError(f"not ready within {timeout}s") from None
            raise

    def cancel(self, ref: FakeRef) -> None:
        """Like ``ray.cancel``: the call ends with ``TaskCancelledError`` unless it ended."""
        self.cancelled.append(ref)
        if not ref.future.done():
            ref.fail(TaskCancelledError())

    @staticmethod
    def put(value: Any) -> PutRef:
        return PutRef(value)

    @staticmethod
    def on_completed(ref: FakeRef, callback: Callable[[Any], None]) -> None:
        ref.future.add_done_callback(lambda f: callback(f.exception() or f.result()))

    classify = staticmethod(RayTransport.classify)

    # -- test helpers ------------------------------------------------------------------
    def pending(self) -> list[FakeRef]:
        return [c for c in self.calls if not c.future.done()]

    def on(self, replica_tag: str) -> list[FakeRef]:
        return [c for c in self.calls if c.replica.replica_tag == replica_tag]


@dataclass(frozen=True)
class FakeActorId:
    value: str

    def hex(self) -> str:
        return self.value


@dataclass(frozen=True)
class FakeActorHandle:
    """Only the identity of a replica actor (what ``classify`` compares)."""

    _actor_id: FakeActorId


def replica(backend: str, tag: str, max_concurrent_queries: int = 100) -> ReplicaInfo:
    name = f"serveplane:{backend}#{tag}"
    handle = FakeActorHandle(FakeActorId(hashlib.md5(name.encode()).hexdigest()))  # 16 bytes, like Ray's
    return ReplicaInfo(backend, tag, name, handle, max_concurrent_queries)


def actor_id(replica: ReplicaInfo) -> str:
    return str(replica.actor_handle._actor_id.hex())


def actor_died(replica: ReplicaInfo | None = None) -> ActorDiedError:
    """Ray's error about a dead actor (``replica``'s, or an unknown one's)."""
    error = ActorDiedError()
    error.actor_id = actor_id(replica) if replica is not None else None
    return error


def endpoint(name: str = "ep", traffic: dict[str, float] | None = None, **fields: Any) -> EndpointInfo:
    return EndpointInfo(name=name, route=None, methods=("GET",), traffic=traffic or {"b": 1.0}, **fields)


def backend_config(backend: str, **config: Any) -> BackendInfo:
    return BackendInfo(backend, BackendConfig(**config))


def dependency_died(producer: ReplicaInfo) -> BaseException:
    """What a call gets when ``producer``, which made one of its arguments, died: Ray
    raises the argument's error inside the task, so it comes wrapped in a task error."""
    return RayTaskError("handle_request", "traceback", actor_died(producer)).as_instanceof_cause()


def nested_call_died(other: ReplicaInfo | None = None) -> BaseException:
    """What a call gets when the *user's code* called some other actor that died."""
    return RayTaskError("handle_request", "traceback", actor_died(other)).as_instanceof_cause()


def publish(source: Any, name: str = "ep", traffic: dict[str, float] | None = None,
            replicas: dict[str, int] | None = None, config: dict[str, dict] | None = None,
            **endpoint_fields: Any) -> dict[str, list[ReplicaInfo]]:
    """Push an endpoint, its backends' replicas and configs; return the replicas."""
    traffic = traffic or {"b": 1.0}
    made: dict[str, list[ReplicaInfo]] = {}
    backends = set(traffic) | set(endpoint_fields.get("shadows", {}))
    for backend in sorted(backends):
        count = (replicas or {}).get(backend, 2)
        made[backend] = [replica(backend, f"r{i}") for i in range(count)]
        source.set(keys.replicas(backend), tuple(made[backend]))
        source.set(keys.backend_config(backend), backend_config(backend, **(config or {}).get(backend, {})))
    source.set(keys.endpoint(name), endpoint(name, traffic, **endpoint_fields))
    return made
