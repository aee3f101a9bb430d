"""What one client can hold open on the HTTP proxy: connections and request heads.

Invariants (one ``ConnectionLimits`` per proxy, used from its event loop only):

- at most ``max_connections`` connections are open at once, and at most
  ``max_connections_per_client`` from one client address; a connection past either cap is
  answered at once with 503, ``Retry-After`` and a body that names the cap, then closed,
  and is never counted;
- a request head (request line and headers) must arrive whole within ``head_timeout_s`` of
  the connection opening, or of the previous response ending on a keep-alive connection;
  past it the connection is answered 408 naming ``request_head_timeout_s`` and closed. So a
  connection that trickles headers holds its socket and task for a bounded time only.

The guard is a subclass of uvicorn's h11 protocol (``guarded_protocol``): the only place the
proxy steps into uvicorn, through the hooks its protocol already has (``connection_made``,
``data_received``, ``on_response_complete``, ``connection_lost``).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

REFUSED_LINGER_S = 1.0  # a refused connection reads (and drops) what its client sends for this long


class ConnectionLimits:
    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.open = 0
        self.peak_open = 0
        self.refused = 0
        self.head_timeouts = 0
        self._by_client: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return (f"<ConnectionLimits [open: {self.open}/{self.max_connections} | clients: "
                f"{len(self._by_client)} | refused: {self.refused}]>")

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; or why it is refused (nothing counted)."""
        if self.open >= self.max_connections:
            self.refused += 1
            return (f"the proxy has max_connections={self.max_connections} connections open; "
                    "retry after 1s")
        if self._by_client[client] >= self.max_per_client:
            self.refused += 1
            return (f"client {client} has max_connections_per_client={self.max_per_client} "
                    "connections open; close one, or retry after 1s")
        self._by_client[client] += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def statistics(self) -> dict[str, Any]:
        return {"open_connections": self.open, "peak_open_connections": self.peak_open,
                "max_connections": self.max_connections,
                "max_connections_per_client": self.max_per_client,
                "refused_connections": self.refused, "request_head_timeouts": self.head_timeouts}


def raw_response(status: int, reason: str, error: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer written before (or instead of) a request cycle."""
    body = json.dumps({"error": error}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits, head_timeout_s: float) -> type:
    """uvicorn's h11 protocol with the caps and the head deadline of the module docstring."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _client_address: str | None = None  # set when counted
        _refused = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else "unknown"
            why = limits.admit(address)
            if why is not None:
                self._refuse(why)
                return
            self._client_address = address
            self._arm_head_deadline()

        def _refuse(self, why: str) -> None:
            self._refused = True
            self.transport.write(raw_response(503, "Service Unavailable", why, {"Retry-After": "1"}))
            if self.transport.can_write_eof():
                self.transport.write_eof()  # read what the client sends meanwhile: no reset
                self.loop.call_later(REFUSED_LINGER_S, self.transport.close)
            else:
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm_head_deadline()  # the head is in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            if self._client_address is not None:
                limits.release(self._client_address)
                self._client_address = None
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            limits.head_timeouts += 1
            self.transport.write(raw_response(
                408, "Request Timeout", f"request head not received within request_head_timeout_s="
                f"{head_timeout_s:g}s; send the request line and headers at once"))
            self.transport.close()

    return GuardedH11Protocol
