"""Request context carried through contextvars, so nested handle calls inherit it."""

from __future__ import annotations

import contextvars

from serveplane.records import RequestMetadata

# The session a call belongs to; set by ``Handle.session()`` and inside replicas while
# they run a request of a session, so nested handle calls stick to the same session.
current_session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "serveplane_session_id", default=None)

# Metadata of the request a replica is running (None outside a request).
current_request: contextvars.ContextVar[RequestMetadata | None] = contextvars.ContextVar(
    "serveplane_request", default=None)
