"""Request context carried through contextvars, so nested handle calls inherit it."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from serveplane.records import RequestMetadata

# The session a call belongs to; set by ``Handle.session()`` and inside replicas while
# they run a request of a session, so nested handle calls stick to the same session.
current_session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "serveplane_session_id", default=None)

@dataclass(frozen=True)
class ReplicaContext:
    """Where the code of this process runs, when it is a replica (set before user code runs)."""

    backend: str
    replica_tag: str
    namespace: str | None  # the serveplane instance the replica belongs to


_replica_context: ReplicaContext | None = None


def set_replica_context(context: ReplicaContext) -> None:
    global _replica_context
    _replica_context = context


def get_replica_context() -> ReplicaContext | None:
    """This replica's backend, tag and serveplane namespace; ``None`` outside a replica."""
    return _replica_context


# Metadata of the request a replica is running (None outside a request).
current_request: contextvars.ContextVar[RequestMetadata | None] = contextvars.ContextVar(
    "serveplane_request", default=None)
