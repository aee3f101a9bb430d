"""The dashboard's HTTP side, in the proxy: the page, its two static files, and the live
feed as server-sent events.

- ``GET /-/dashboard``: ``index.html``; ``GET /-/dashboard/static/<file>``: ``dashboard.css``
  or ``dashboard.js`` (an allow-list; nothing else of the package is reachable);
- ``GET /-/dashboard/events``: ``text/event-stream``, one ``snapshot`` event per new value
  of the controller's ``dashboard`` long-poll key, a comment every ``KEEPALIVE_S``.

The proxy follows the key only while at least one viewer is connected (``DashboardHub``):
the first viewer subscribes, the last one leaving unsubscribes. A value is encoded once
and put in every viewer's queue of one: a slow viewer skips to the latest value instead
of buffering, so a viewer can make the proxy hold at most one snapshot.

Auth: the proxy checks API keys before any of this (``/-/metrics``'s rule). A browser
cannot send ``Authorization`` with ``EventSource``, so on these paths the key may also come
as ``?key=`` (``api_key_from_query``), once: the page answers it with a redirect to itself
without the key and a session cookie (``DashboardSessions``: HttpOnly, SameSite=Strict,
``Path=/-/dashboard``, ``Secure`` over TLS, ``SESSION_TTL_S``), so the key does not stay in
the address bar or the browser's history; the page, its files and its feed then go by the
cookie. A session names its key by id and ends when that key is no longer accepted, when it
expires, or when the proxy restarts (its signing secret lives in the proxy's memory).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import threading
import time
from importlib import resources
from typing import Any, AsyncIterator
from urllib.parse import quote

from serveplane.dashboard.feed import DASHBOARD_KEY
from serveplane.records import CONTROLLER_NAME

PREFIX = "/-/dashboard"
STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
KEEPALIVE_S = 15.0
RETRY_MS = 2000


SESSION_COOKIE = "serveplane_dashboard"
SESSION_TTL_S = 3600


class DashboardSessions:
    """Signed, expiring session tokens: ``<expiry>.<key id>.<HMAC-SHA256>`` under a secret
    of this proxy process."""

    def __init__(self, clock: Any = time.time, ttl_s: float = SESSION_TTL_S) -> None:
        self._secret = os.urandom(32)
        self._clock = clock
        self.ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"<DashboardSessions ttl {self.ttl_s:g}s>"

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str) -> str:
        body = f"{int(self._clock() + self.ttl_s)}.{key_id}"
        return f"{body}.{self._mac(body)}"

    def key_id(self, token: str | None) -> str | None:
        """The key id of a valid, unexpired token; else None."""
        if not token or token.count(".") != 2:
            return None
        expiry, key_id, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(f"{expiry}.{key_id}")):
            return None
        if not expiry.isdigit() or int(expiry) < self._clock():
            return None
        return key_id

    def cookie(self, key_id: str, secure: bool) -> str:
        return (f"{SESSION_COOKIE}={self.issue(key_id)}; Max-Age={int(self.ttl_s)}; Path={PREFIX}; "
                f"HttpOnly; SameSite=Strict" + ("; Secure" if secure else ""))


def api_key_from_query(path: str, query_params: Any) -> str | None:
    """The ``key`` query parameter on dashboard paths only (EventSource sends no headers)."""
    if path == PREFIX or path.startswith(PREFIX + "/"):
        return query_params.get("key") or None
    return None


class DashboardHub:
    """Fans the ``dashboard`` key out to this proxy's viewers; one per proxy process."""

    def __init__(self, namespace: str, loop: asyncio.AbstractEventLoop) -> None:
        self.namespace = namespace
        self._loop = loop
        self._viewers: set[asyncio.Queue[bytes]] = set()
        self._latest: bytes | None = None
        self._subscription: Any = None
        self._lock = threading.Lock()
        self.events_published = 0   # values received from the controller
        self.events_sent = 0        # events written to viewers, all together
        self.events_skipped = 0     # values a slow viewer never saw (it got a later one)

    def __repr__(self) -> str:
        return (f"<DashboardHub {self.namespace!r} [viewers: {len(self._viewers)} | "
                f"published: {self.events_published} | sent: {self.events_sent}]>")

    def statistics(self) -> dict[str, Any]:
        return {"viewers": len(self._viewers), "events_published": self.events_published,
                "events_sent": self.events_sent, "events_skipped": self.events_skipped,
                "snapshot_bytes": len(self._latest or b"")}

    # -- long-poll side (its thread) ---------------------------------------------------------
    def _on_value(self, value: Any) -> None:
        if value is None:
            return
        data = json.dumps(_finite(value), default=str, separators=(",", ":"), allow_nan=False)
        event = b"event: snapshot\ndata: " + data.encode() + b"\n\n"
        self._loop.call_soon_threadsafe(self._fan_out, event)

    # -- event loop side ---------------------------------------------------------------------
    def _fan_out(self, event: bytes) -> None:
        self._latest = event
        self.events_published += 1
        for queue in self._viewers:
            _put_latest(queue, event, self)

    def _join(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        if self._latest is not None:
            queue.put_nowait(self._latest)
        self._viewers.add(queue)
        if self._subscription is None:
            from serveplane.long_poll import LongPollClient

            client = LongPollClient.get_or_create(CONTROLLER_NAME, self.namespace)
            self._subscription = client.subscribe(DASHBOARD_KEY, self._on_value)
        return queue

    def _leave(self, queue: asyncio.Queue[bytes]) -> None:
        self._viewers.discard(queue)
        if not self._viewers and self._subscription is not None:
            from serveplane.long_poll import LongPollClient

            client = LongPollClient.existing(CONTROLLER_NAME, self.namespace)
            if client is not None:
                client.unsubscribe(self._subscription)
            self._subscription = None
            self._latest = None  # a later first viewer must not see a stale page

    async def stream(self, request: Any) -> AsyncIterator[bytes]:
        queue = self._join()
        gone = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(request, gone),
                                                         name="serveplane-dashboard-viewer")
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while not gone.is_set():
                getter = asyncio.ensure_future(queue.get())
                closed = asyncio.ensure_future(gone.wait())
                try:
                    await asyncio.wait({getter, closed}, timeout=KEEPALIVE_S,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    self.events_sent += 1
                    yield getter.result()
                elif not gone.is_set():
                    yield b": keepalive\n\n"
        finally:
            watcher.cancel()
            self._leave(queue)


async def _watch_disconnect(request: Any, gone: asyncio.Event) -> None:
    """Sets ``gone`` when the viewer goes, so the proxy lets go of it at once rather than at
    its next write."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - the connection is unusable: same as gone
        pass
    gone.set()


def _finite(value: Any) -> Any:
    """NaN and infinities as null: the browser's JSON.parse refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _put_latest(queue: asyncio.Queue[bytes], event: bytes, hub: DashboardHub) -> None:
    if queue.full():
        queue.get_nowait()
        hub.events_skipped += 1
    queue.put_nowait(event)


_hubs: dict[str, DashboardHub] = {}


def hub_for(namespace: str) -> DashboardHub:
    hub = _hubs.get(namespace)
    if hub is None:
        hub = _hubs[namespace] = DashboardHub(namespace, asyncio.get_running_loop())
    return hub


def _asset(name: str) -> bytes:
    return resources.files("serveplane.dashboard").joinpath("static").joinpath(name).read_bytes()


async def serve_dashboard(request: Any, namespace: str, sessions: DashboardSessions | None = None,
                          key_id: str | None = None) -> Any:
    """The answer to any ``/-/dashboard...`` path (the proxy already checked the API key;
    ``key_id`` is the key's id when it came as ``?key=``, which the page trades for a cookie)."""
    from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

    path = request.url.path
    if request.method not in ("GET", "HEAD"):
        return JSONResponse({"error": f"method {request.method[:32]} is not allowed for {path[:200]!r}; "
                                      "allowed: GET"}, status_code=405, headers={"Allow": "GET"})
    key = request.query_params.get("key")
    suffix = f"?key={quote(key, safe='')}" if key else ""
    if path in (PREFIX, PREFIX + "/") and key and key_id is not None and sessions is not None:
        # the key leaves the URL (and the history) at once; the cookie carries the session
        return RedirectResponse(PREFIX, status_code=303, headers={
            "Set-Cookie": sessions.cookie(key_id, secure=request.url.scheme == "https"),
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    if path in (PREFIX, PREFIX + "/"):
        page = _asset("index.html").replace(b"{{KEY_QUERY}}", suffix.encode())
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    if path == PREFIX + "/events":
        return StreamingResponse(hub_for(namespace).stream(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    if path == PREFIX + "/stats":
        return JSONResponse(hub_for(namespace).statistics())
    name = path.removeprefix(PREFIX + "/static/")
    if name in STATIC:
        return Response(_asset(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})
    return JSONResponse({"error": f"no dashboard file {path[:200]!r}; the page is {PREFIX}"}, status_code=404)
