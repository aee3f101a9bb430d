"""How a router talks to replicas: the only Ray calls on the data path live here.

A router sends through a ``Transport``, so unit tests swap in a fake one and run the
whole queueing, back-pressure and retry logic without Ray. A "ref" is whatever ``send``
returns: it must be awaitable, and the transport knows how to ``get`` it synchronously
and how to run a callback when it completes.

Failure classes (``classify``), which decide what the router does with an error:

- ``REPLICA_DIED``: the replica that ran the call is gone (``RayActorError`` raised for
  *that* actor, not wrapped in a ``RayTaskError``): hide it, retry elsewhere;
- ``DEPENDENCY_DIED``: an argument's producer died (``RayTaskError`` whose cause is an
  actor death, or a death of another actor): the replica is fine, the argument must be
  recomputed first;
- ``APPLICATION``: anything else (user code raised, timeouts): reaches the caller as is.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError

from serveplane.records import ReplicaInfo, RequestMetadata


class Failure(str, enum.Enum):
    REPLICA_DIED = "replica_died"
    DEPENDENCY_DIED = "dependency_died"
    APPLICATION = "application"


class Transport(Protocol):
    def send(self, replica: ReplicaInfo, meta: RequestMetadata, args: tuple, kwargs: dict) -> Any: ...

    def send_batch(self, replica: ReplicaInfo, meta: RequestMetadata,
                   calls: list[tuple[tuple, dict]]) -> Any: ...

    def get(self, ref: Any, timeout: float | None) -> Any: ...

    def on_completed(self, ref: Any, callback: Callable[[Any], None]) -> None: ...

    def classify(self, error: BaseException, replica: ReplicaInfo) -> Failure: ...


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
    def classify(error: BaseException, replica: ReplicaInfo) -> Failure:
        if not isinstance(error, RayActorError):
            return Failure.APPLICATION
        if isinstance(error, RayTaskError):
            return Failure.DEPENDENCY_DIED
        died = getattr(error, "actor_id", None)
        ours = _actor_id(replica)
        if died is not None and ours is not None and died != ours:
            return Failure.DEPENDENCY_DIED
        return Failure.REPLICA_DIED


def wire_metadata(meta: RequestMetadata) -> list:
    """``meta`` as the list of its fields, in order: ``RequestMetadata(*wire)`` rebuilds it.

    Ray serializes a list of strings, ``None`` and bools with msgpack, but a dataclass (or
    a tuple) through pickle; on a no-op call that is ~15% of the throughput.
    """
    return [meta.request_id, meta.endpoint, meta.method_name, meta.session_id, meta.shard_key,
            meta.is_shadow, meta.http]


def _actor_id(replica: ReplicaInfo) -> str | None:
    try:
        return replica.actor_handle._actor_id.hex()
    except AttributeError:
        return None


RAY_TRANSPORT = RayTransport()
