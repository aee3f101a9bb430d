"""Request context carried through contextvars, so nested handle calls inherit it."""

from __future__ import annotations

import contextvars
import time
import weakref
from typing import Any
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


class RequestContext:
    """What user code can know about the request it is running (inside a replica).

    ``serveplane.get_request_context()`` returns it; ``remaining_s()`` is the time left
    before the caller's deadline (``None`` when the request has none), so a model can cut
    its work short instead of being cancelled. Handle calls made while running a request
    inherit its remaining budget and are cancelled with it.
    """

    __slots__ = ("meta", "_children", "__weakref__")

    def __init__(self, meta: RequestMetadata) -> None:
        self.meta = meta
        self._children: Any = None  # weak set of the handle calls this request made

    @property
    def request_id(self) -> str:
        return self.meta.request_id

    @property
    def endpoint(self) -> str:
        return self.meta.endpoint

    @property
    def method_name(self) -> str:
        return self.meta.method_name

    @property
    def session_id(self) -> str | None:
        return self.meta.session_id

    @property
    def deadline(self) -> float | None:
        """Wall-clock seconds since the epoch when the caller stops waiting, or ``None``."""
        return self.meta.deadline

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (0 once past it), or ``None`` without one."""
        deadline = self.meta.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - time.time())

    def add_child(self, child: Any) -> None:
        if self._children is None:
            self._children = weakref.WeakSet()
        self._children.add(child)

    def cancel_children(self) -> int:
        """Cancel every handle call this request made that is still running."""
        children = list(self._children) if self._children is not None else []
        for child in children:
            child.cancel()
        return len(children)

    def __repr__(self) -> str:
        return f"<RequestContext {self.meta.endpoint}.{self.meta.method_name} {self.meta.request_id}>"


current_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "serveplane_request_context", default=None)


def get_request_context() -> RequestContext | None:
    """The request this code runs for (inside a replica), or ``None`` outside one."""
    return current_context.get()
