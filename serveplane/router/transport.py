"""How a router talks to replicas: the only Ray calls on the data path live here.

A router sends through a ``Transport``, so unit tests swap in a fake one and run the
whole queueing, back-pressure and retry logic without Ray. A "ref" is whatever ``send``
returns: it must be awaitable, and the transport knows how to ``get`` it synchronously
and how to run a callback when it completes.

Failure classes (``classify``), which decide what the router does with an error. They are
told apart by exception type and by the identity of the actor the error is about, never by
message text:

- ``REPLICA_DIED``: the replica that ran the call is gone (a ``RayActorError`` about *that*
  actor, raised by Ray for the call itself, not wrapped in a ``RayTaskError``): hide it for
  good; the call may have run, so it is retried only for an idempotent backend;
- ``REPLICA_UNAVAILABLE``: that replica is unreachable for now (``ActorUnavailableError``);
  it may come back: back it off for a while; the call may have run (same retry rule);
- ``DEPENDENCY_DIED``: an argument's producer died or is unreachable (an actor error about
  the replica that produced one of the call's ``Response`` arguments, or about an actor
  other than the replica when it comes unwrapped): the replica is fine and did not run the
  call; the argument must be recomputed first;
- ``REPLICA_FULL``: the replica refused the call without running it (``ReplicaFullError``:
  at ``max_concurrent_queries`` across all routers, or draining): try another replica;
- ``APPLICATION``: anything else: user code raised (whatever its message says), including
  a ``RayTaskError`` from the user's own call to some other actor, and timeouts. It reaches
  the caller as is.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Protocol, Sequence

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from serveplane.exceptions import ReplicaFullError
from serveplane.replica.streaming import STREAM_BUFFER

from serveplane.records import ReplicaInfo, RequestMetadata


class Failure(str, enum.Enum):
    REPLICA_DIED = "replica_died"
    REPLICA_UNAVAILABLE = "replica_unavailable"
    DEPENDENCY_DIED = "dependency_died"
    REPLICA_FULL = "replica_full"
    APPLICATION = "application"


class Transport(Protocol):
    def send(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any: ...

    def send_batch(self, replica: ReplicaInfo, meta: RequestMetadata,
                   calls: list[tuple[tuple, dict]]) -> Any: ...

    def send_stream(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any:
        """A streaming call; returns a generator of chunk refs (``next_chunk`` reads one)."""

    async def next_chunk(self, stream: Any) -> Any:
        """The next chunk of ``stream``'s call; ``StopAsyncIteration`` at its end."""

    def next_chunk_sync(self, stream: Any, timeout: float | None) -> Any:
        """``next_chunk`` for sync callers; ``StopIteration`` at the end."""

    def pull_stream(self, replica: ReplicaInfo, stream_id: str) -> Any:
        """The body a replica kept for a ``StreamHandoff``, as a stream."""

    def cancel(self, ref: Any) -> None:
        """Cancel the call behind ``ref`` (or a stream): the replica's task gets
        ``CancelledError``, or never starts."""

    def put(self, value: Any) -> Any:
        """A ref holding ``value`` (an argument already answered, passed on by reference)."""

    def get(self, ref: Any, timeout: float | None) -> Any: ...

    def on_completed(self, ref: Any, callback: Callable[[Any], None]) -> None: ...

    def classify(self, error: BaseException, replica: ReplicaInfo,
                 producers: Sequence[ReplicaInfo] = ()) -> Failure:
        """What ``error`` of a call to ``replica`` means; ``producers`` made its arguments."""


class RayTransport:
    """One actor call per request: ``replica.actor_handle.handle_request.remote(meta, *args)``.

    User arguments travel as top-level arguments so Ray resolves ``ObjectRef`` s among them
    on the replica (a ``Response`` passed to another call is never fetched by the caller).
    """

    @staticmethod
    def send(replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any:
        return replica.actor_handle.handle_request.remote(wire_metadata(meta), *args, **kwargs)

    @staticmethod
    def send_batch(replica: ReplicaInfo, meta: RequestMetadata, calls: list[tuple[tuple, dict]]) -> Any:
        return replica.actor_handle.handle_batch.remote(meta, calls)

    @staticmethod
    def send_stream(replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any:
        # .options() costs tens of microseconds: once per actor. The cached method holds the
        # handle, so the handle's id is not reused while it is a key.
        key = (replica.actor_name, id(replica.actor_handle))
        method = _stream_methods.get(key)
        if method is None:
            if len(_stream_methods) > 10_000:
                _stream_methods.clear()
            method = _stream_methods[key] = replica.actor_handle.handle_stream.options(
                num_returns="streaming", _generator_backpressure_num_objects=STREAM_BUFFER)
        return method.remote(wire_metadata(meta), *args, **kwargs)

    @staticmethod
    def pull_stream(replica: ReplicaInfo, stream_id: str) -> Any:
        method = replica.actor_handle.pull_stream.options(
            num_returns="streaming", _generator_backpressure_num_objects=STREAM_BUFFER)
        return method.remote(stream_id)

    @staticmethod
    async def next_chunk(stream: Any) -> Any:
        return await (await stream.__anext__())

    @staticmethod
    def next_chunk_sync(stream: Any, timeout: float | None) -> Any:
        ref = stream._next_sync(timeout)
        if ref.is_nil():
            raise GetTimeoutError(f"no chunk within {timeout}s")
        return ray.get(ref, timeout=timeout)

    @staticmethod
    def cancel(ref: Any) -> None:
        try:
            ray.cancel(ref, recursive=True)
        except Exception:  # noqa: BLE001 - already finished, or its owner is gone
            pass

    @staticmethod
    def put(value: Any) -> Any:
        return ray.put(value)

    @staticmethod
    def get(ref: Any, timeout: float | None) -> Any:
        return ray.get(ref, timeout=timeout)

    @staticmethod
    def on_completed(ref: Any, callback: Callable[[Any], None]) -> None:
        """``callback(value or error)`` on Ray's callback thread; errors as ``await`` raises them."""
        def completed(value: Any) -> None:
            if isinstance(value, RayTaskError):
                value = value.as_instanceof_cause()
            callback(value)

        ref._on_completed(completed)

    @staticmethod
    def classify(error: BaseException, replica: ReplicaInfo,
                 producers: Sequence[ReplicaInfo] = ()) -> Failure:
        if isinstance(error, ReplicaFullError):
            return Failure.REPLICA_FULL  # raised by the replica before running anything
        if isinstance(error, RayTaskError):
            # raised inside the replica's task: the replica ran it. Only an argument that
            # could not be fetched (its producer's error) is not the user's own failure.
            cause = getattr(error, "cause", None)
            died = getattr(cause, "actor_id", None) if isinstance(cause, RayActorError) else None
            if died is not None and any(_actor_id(p) == died for p in producers):
                return Failure.DEPENDENCY_DIED
            return Failure.APPLICATION
        if not isinstance(error, RayActorError):
            return Failure.APPLICATION
        died = getattr(error, "actor_id", None)
        ours = _actor_id(replica)
        if died is not None and ours is not None and died != ours:
            return Failure.DEPENDENCY_DIED
        if isinstance(error, ActorUnavailableError):
            return Failure.REPLICA_UNAVAILABLE
        return Failure.REPLICA_DIED


def wire_metadata(meta: RequestMetadata) -> list:
    """``meta`` as the list of its fields, in order: ``RequestMetadata(*wire)`` rebuilds it.

    Ray serializes a list of strings, ``None`` and bools with msgpack, but a dataclass (or
    a tuple) through pickle; on a no-op call that is ~15% of the throughput.
    """
    return [meta.request_id, meta.endpoint, meta.method_name, meta.session_id, meta.shard_key,
            meta.is_shadow, meta.http, meta.http_method, meta.http_headers, meta.deadline, meta.trace]


def _actor_id(replica: ReplicaInfo) -> str | None:
    try:
        return str(replica.actor_handle._actor_id.hex())
    except AttributeError:
        return None


_stream_methods: dict[tuple[str, int], Any] = {}  # an actor's handle_stream with stream options

RAY_TRANSPORT = RayTransport()
