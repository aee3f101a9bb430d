"""The HTTP proxy actor: routes come from the controller by long-poll.

Invariants: no request can take the proxy down, and none can make it hold unbounded memory.
Before any request, the connection (``connections.py``): past ``max_connections`` open, or
``max_connections_per_client`` from its address, 503 and closed; a request head not in
within ``request_head_timeout_s``, 408 and closed. Then checks run in this order, each
answering with short JSON that says what to do:

1. ``/-/healthz`` answers at once (no key, no limit);
2. API keys (``HTTPOptions.api_keys`` / ``api_keys_file``): no valid ``Authorization:
   Bearer <key>`` is 401 (``/-/routes`` and ``/-/metrics`` included);
3. rate limit (``rate_limit_rps``, per key, or per client address without keys): 429 with
   ``Retry-After``;
4. admission: past ``max_concurrent_requests`` in flight, 503 with ``Retry-After``;
5. routing: unknown path 404, wrong method 405, ``X-SERVE-CALL-METHOD`` naming a method the
   backend does not expose over HTTP 404 (``serveplane/exposure.py``);
6. the body: over ``max_body_bytes`` 413 (before it is read whole), not received within
   ``body_read_timeout_s`` 408, no room left in ``max_buffered_body_bytes`` 503 (a body is
   reserved chunk by chunk as it arrives, never by its declared ``Content-Length``);
7. the call: its deadline is ``request_timeout_s``, or the ``X-SERVE-TIMEOUT-S`` header
   when that is sooner (a bad header 400); past it 504 (queued past it, it never ran);
   back-pressure 503 with ``Retry-After``, any other error 500 with an error id only (the
   exception is logged under that id; ``debug_errors`` puts its message in the answer).

Streams: a generator method's chunks reach the client as they are produced (chunked
transfer; ``text/event-stream`` when the request sends ``Accept: text/event-stream``, one
``data:`` event per chunk, or when the backend returns a ``StreamingResponse`` of that
media type). Errors before the first chunk answer as above; after it, the connection is
closed without the final chunk, so the client sees the stream was cut. A client that
disconnects cancels its request: queued, it never runs; running, the replica's call is
cancelled (a stream's generator stops).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import uuid
from typing import Any

from serveplane import tracing
from serveplane.config import HTTPOptions
from serveplane.dashboard.server import (
    PREFIX as DASHBOARD,
    SESSION_COOKIE,
    DashboardSessions,
    api_key_from_query,
    serve_dashboard,
)
from serveplane.exceptions import (
    BackPressureError,
    InvalidConfigError,
    MethodNotExposedError,
    NoReplicasError,
    NotFoundError,
    RequestCancelledError,
    RequestTimeoutError,
    StreamingMethodError,
)
from serveplane.exposure import check_name_over_http
from serveplane.http.auth import ApiKeys, bearer_token
from serveplane.http.connections import ConnectionLimits, guarded_protocol
from serveplane.http.limits import Admission, TokenBuckets
from serveplane.http.request import HTTPRequest
from serveplane.records import CONTROLLER_NAME, keys
from serveplane.replica.streaming import StreamHandoff
from serveplane.router.stream import HandoffStream
from serveplane.tls import CHECK_EVERY_S, ReloadingContext, TLSFiles

logger = logging.getLogger("serveplane.http")

HEADER_METHOD = "x-serve-call-method"
HEADER_SHARD = "x-serve-shard-key"
HEADER_SESSION = "x-serve-session-id"
HEADER_TIMEOUT = "x-serve-timeout-s"
RETRY_AFTER_S = 1


def match_route(routes: dict[str, tuple[str, tuple[str, ...]]], path: str) -> tuple[str, tuple[str, ...]] | None:
    """Longest route that equals the path or is a prefix of it at a '/' boundary."""
    best = None
    for route, target in routes.items():
        if path == route or route == "/" or path.startswith(route.rstrip("/") + "/"):
            if best is None or len(route) > len(best[0]):
                best = (route, target)
    return best[1] if best else None


def _json(status: int, error: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": error}, status_code=status, headers=headers)


_RETRY = {"Retry-After": str(RETRY_AFTER_S)}


class _BodyRefused(Exception):
    def __init__(self, response: Any) -> None:
        self.response = response


class ProxyApp:
    """The ASGI app (every path goes to ``serve``: routes are dynamic) and its counters."""

    def __init__(self, options: HTTPOptions, namespace: str, routes_ref: dict[str, Any]) -> None:
        self.options = options
        self.streaming: set[tuple[str, str]] = set()  # (endpoint, method) answered as streams
        self.namespace = namespace
        self.routes_ref = routes_ref
        self.keys = ApiKeys([k.get_secret_value() for k in options.api_keys]
                            if options.api_keys is not None else None, options.api_keys_file)
        self.buckets = (TokenBuckets(options.rate_limit_rps, options.burst)
                        if options.rate_limit_rps is not None else None)
        self.admission = Admission(options.max_concurrent_requests, options.buffered_body_budget)
        self.connections = ConnectionLimits(options.max_connections, options.max_connections_per_client)
        self.sessions = DashboardSessions()
        self.answered: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<ProxyApp {self.namespace!r} {self.admission!r} answered={self.answered}>"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.requests import Request

        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        response = await self.serve(Request(scope, receive, send))
        self.answered[response.status_code] = self.answered.get(response.status_code, 0) + 1
        await response(scope, receive, send)

    async def serve(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        if request.url.path == "/-/healthz":
            return PlainTextResponse("ok")
        query_key = api_key_from_query(request.url.path, request.query_params)
        caller = self.keys.match(bearer_token(request.headers.get("authorization")) or query_key) \
            if self.keys.enabled else None
        if self.keys.enabled and caller is None and query_key is None \
                and request.url.path.startswith(DASHBOARD):
            session = self.sessions.key_id(request.cookies.get(SESSION_COOKIE))
            caller = session if session is not None and self.keys.holds(session) else None
        request.state.query_key_id = caller if query_key is not None else None
        if self.keys.enabled and caller is None:
            return _json(401, "missing or invalid API key; send the header Authorization: Bearer <key>",
                         {"WWW-Authenticate": "Bearer"})
        if self.buckets is not None:
            bucket = caller or f"address:{request.client.host if request.client else 'unknown'}"
            wait = self.buckets.take(bucket)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                return _json(429, f"rate limit of {self.options.rate_limit_rps:g} requests/s exceeded; "
                                  f"retry after {retry}s", {"Retry-After": str(retry)})
        if not self.admission.enter():
            return _json(503, f"the proxy is at max_concurrent_requests={self.admission.max_in_flight}; "
                              f"retry after {RETRY_AFTER_S}s", _RETRY)
        reserved = [0]
        try:
            if tracing.ENABLED:
                return await tracing.traced_http(request, self._routed(request, reserved))
            return await self._routed(request, reserved)
        except _BodyRefused as refused:
            return refused.response
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            return self._internal_error(None, exc)
        finally:
            self.admission.release(reserved[0])
            self.admission.leave()

    async def _routed(self, request: Any, reserved: list[int]) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path
        if path == "/-/routes":
            return JSONResponse({r: {"endpoint": e, "methods": list(m)}
                                 for r, (e, m) in self.routes_ref["routes"].items()})
        if path == "/-/metrics":
            return await _metrics(self.namespace)
        if path == DASHBOARD or path.startswith(DASHBOARD + "/"):
            return await serve_dashboard(request, self.namespace, self.sessions,
                                         getattr(request.state, "query_key_id", None))
        target = match_route(self.routes_ref["routes"], path)
        if target is None:
            return _json(404, f"no endpoint serves path {path[:200]!r}; GET /-/routes lists them")
        endpoint, methods = target
        if request.method not in methods:
            return JSONResponse({"error": f"method {request.method[:32]} is not allowed for "
                                          f"{path[:200]!r}; allowed: {', '.join(methods)}"},
                                status_code=405, headers={"Allow": ", ".join(methods)})
        method_name = request.headers.get(HEADER_METHOD) or None
        if method_name is not None:
            try:
                check_name_over_http(method_name)
            except MethodNotExposedError as exc:
                return _json(404, str(exc))
        body = await self._read_body(request, reserved)
        http_request = HTTPRequest(method=request.method, path=path,
                                   query_params=dict(request.query_params),
                                   headers={k.lower(): v for k, v in request.headers.items()},
                                   body=body)
        del body
        timeout_s = self.options.request_timeout_s
        asked = request.headers.get(HEADER_TIMEOUT)
        if asked is not None:
            try:
                asked_s = float(asked)
            except ValueError:
                asked_s = math.nan
            if not (asked_s > 0 and math.isfinite(asked_s)):
                return _json(400, f"header X-SERVE-TIMEOUT-S is {asked[:32]!r}; it must be a number of "
                                  "seconds > 0")
            timeout_s = min(timeout_s, asked_s)
        opts: dict[str, Any] = {"timeout_s": timeout_s, "http": True}
        if method_name is not None:
            opts["method_name"] = method_name
        if request.headers.get(HEADER_SHARD):
            opts["shard_key"] = request.headers[HEADER_SHARD]
        if request.headers.get(HEADER_SESSION):
            opts["session_id"] = request.headers[HEADER_SESSION]
        sse = "text/event-stream" in request.headers.get("accept", "")
        streams_key = (endpoint, method_name or "__call__")
        stream: Any = None
        try:
            handle = self._handle(endpoint)
            if sse or streams_key in self.streaming:
                stream = handle.options(stream=True, **opts).remote(http_request)
                first = await _until_disconnect(stream.__anext__(), stream, request.receive)
            else:
                call = handle.options(**opts).remote(http_request)
                try:
                    result = await _until_disconnect(call, call, request.receive)
                except StreamingMethodError:
                    self.streaming.add(streams_key)  # a generator: from now on sent as a stream
                    stream = handle.options(stream=True, **opts).remote(http_request)
                    first = await _until_disconnect(stream.__anext__(), stream, request.receive)
                else:
                    if not isinstance(result, StreamHandoff):
                        return to_response(result)
                    self.streaming.add(streams_key)  # answers StreamingResponses: send as streams
                    stream = HandoffStream(call, result)
                    first = await _until_disconnect(stream.__anext__(), stream, request.receive)
        except StopAsyncIteration:
            first = _NOTHING
        except (RequestTimeoutError, NoReplicasError):
            return _json(504, f"request to endpoint {endpoint!r} timed out after {timeout_s:g}s")
        except RequestCancelledError:
            return _json(499, "the client went away; the request was cancelled")
        except BackPressureError:
            return _json(503, f"endpoint {endpoint!r} is at capacity; retry after {RETRY_AFTER_S}s",
                         _RETRY)
        except MethodNotExposedError as exc:
            return _json(404, str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1])
        except NotFoundError as exc:  # the endpoint was deleted while the request waited
            return _json(404, str(exc))
        except Exception as exc:  # noqa: BLE001 - user code failed: 500 with an id
            return self._internal_error(endpoint, exc)
        if getattr(stream, "whole", False):
            return to_response(first)  # a stream asked of a method that returned one value
        return Streamed(endpoint, stream, first, sse)

    def _handle(self, endpoint: str) -> Any:
        from serveplane.router import get_handle

        return get_handle(endpoint, CONTROLLER_NAME, self.namespace)

    async def _read_body(self, request: Any, reserved: list[int]) -> bytes:
        """The whole body within the bounds (see the module docstring), or ``_BodyRefused``."""
        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > limit:
            raise _BodyRefused(_json(413, f"body of {declared} bytes exceeds max_body_bytes={limit}"))
        # reserved as it arrives, never by the declaration: a client that declares a large body
        # and sends nothing holds nothing of the budget (only its slot, until body_read_timeout_s)
        body: list[bytes] = []

        async def read() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _BodyRefused(_json(413, f"body exceeds max_body_bytes={limit}"))
                if size > reserved[0] and not self._reserve(size - reserved[0], reserved):
                    raise _BodyRefused(self._no_room())
                body.append(chunk)

        try:
            await asyncio.wait_for(read(), timeout=self.options.body_read_timeout_s)
        except asyncio.TimeoutError:
            body.clear()
            raise _BodyRefused(_json(408, f"request body not received within body_read_timeout_s="
                                          f"{self.options.body_read_timeout_s:g}s; send it faster or "
                                          "in a smaller request", {"Connection": "close"})) from None
        except BaseException:
            # freed now, not when the cyclic GC meets the refusal's traceback (which holds it)
            body.clear()
            raise
        try:
            return b"".join(body)
        finally:
            body.clear()

    def _reserve(self, n: int, reserved: list[int]) -> bool:
        if not self.admission.reserve(n):
            return False
        reserved[0] += n
        return True

    def _no_room(self) -> Any:
        return _json(503, f"the proxy holds max_buffered_body_bytes={self.admission.max_buffered_bytes} of "
                          f"request bodies; retry after {RETRY_AFTER_S}s", _RETRY)

    def _internal_error(self, endpoint: str | None, exc: BaseException) -> Any:
        from starlette.responses import JSONResponse

        error_id = uuid.uuid4().hex[:12]
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip()
        where = f"endpoint {endpoint!r}" if endpoint else "the proxy"
        logger.error("error %s in %s: %s: %s", error_id, where, type(cause).__name__, text,
                     exc_info=endpoint is None)
        body = {"error": f"internal error; the server logged it as error {error_id}", "error_id": error_id}
        if self.options.debug_errors:
            body["detail"] = f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"
        return JSONResponse(body, status_code=500)

    def statistics(self) -> dict[str, Any]:
        return {**self.admission.statistics(), **self.connections.statistics(), "answered": dict(sorted(self.answered.items())),
                "pid": os.getpid(), "rss_bytes": _rss_bytes(), "peak_rss_bytes": _rss_bytes("VmHWM"),
                "rss_anon_bytes": _rss_bytes("RssAnon"), "rss_shmem_bytes": _rss_bytes("RssShmem")}


def _rss_bytes(field: str = "VmRSS") -> int | None:
    """This process's resident memory (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def build_app(options: HTTPOptions, namespace: str, routes_ref: dict[str, Any]) -> ProxyApp:
    return ProxyApp(options, namespace, routes_ref)


def to_response(result: Any) -> Any:
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return PlainTextResponse(result)
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), media_type="application/octet-stream")
    try:
        return JSONResponse(result)
    except (TypeError, ValueError):
        return PlainTextResponse(repr(result))


_NOTHING = object()  # a stream that ended before its first chunk


async def _until_disconnect(awaitable: Any, request: Any, receive: Any) -> Any:
    """Await ``awaitable``; if the client disconnects first, cancel ``request`` (its
    awaiter then raises ``RequestCancelledError``)."""
    watcher = asyncio.ensure_future(_disconnected(receive))
    watcher.add_done_callback(lambda w: request.cancel() if not w.cancelled() and w.result() else None)
    try:
        return await awaitable
    finally:
        watcher.cancel()


async def _disconnected(receive: Any) -> bool:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return True


def _encode(chunk: Any, sse: bool) -> bytes:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        data = bytes(chunk)
        if not sse:
            return data
        text = data.decode("utf-8", "replace")
    elif isinstance(chunk, str):
        if not sse:
            return chunk.encode()
        text = chunk
    else:
        text = json.dumps(chunk, default=repr)
        if not sse:
            return (text + "\n").encode()
    return ("".join(f"data: {line}\n" for line in text.split("\n")) + "\n").encode()


def _media_type(first: Any, sse: bool) -> str:
    if sse:
        return "text/event-stream"
    if isinstance(first, str):
        return "text/plain; charset=utf-8"
    if isinstance(first, (bytes, bytearray, memoryview)) or first is _NOTHING:
        return "application/octet-stream"
    return "application/x-ndjson"


class Streamed:
    """An ASGI response that sends a stream's chunks as they come (chunked transfer).

    The client's disconnect cancels the stream (the replica's generator stops); a failure
    after the first chunk closes the connection without the final chunk."""

    def __init__(self, endpoint: str, stream: Any, first: Any, sse: bool) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.first = first
        start = getattr(stream, "start", None)
        if start is not None:  # the backend's own StreamingResponse: its status and headers
            self.status_code = start.status_code
            self.headers = [h for h in start.headers if h[0].lower() != b"content-length"]
            self.sse = False  # it formats its own events
            if not any(h[0].lower() == b"content-type" for h in self.headers) and start.media_type:
                self.headers.append((b"content-type", start.media_type.encode()))
        else:
            self.status_code = 200
            self.sse = sse
            self.headers = [(b"content-type", _media_type(first, sse).encode())]
            if sse:
                self.headers.append((b"cache-control", b"no-cache"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        done = False
        gone: list[bool] = []

        def on_disconnect(watch: asyncio.Future) -> None:
            if not done and not watch.cancelled() and watch.result():
                gone.append(True)
                self.stream.cancel()
                if task is not None:
                    task.cancel()

        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(on_disconnect)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.headers})
            if self.first is not _NOTHING:
                await send({"type": "http.response.body", "body": _encode(self.first, self.sse),
                            "more_body": True})
            self.first = None
            async for chunks in self.stream.batches():  # chunks that came together: one write
                body = b"".join(_encode(chunk, self.sse) for chunk in chunks)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
        except Exception as exc:
            logger.warning("stream of endpoint %r cut after it started: %s: %s", self.endpoint,
                           type(exc).__name__, str(exc)[:200])
            raise  # the server closes the connection without the final chunk
        finally:
            done = True
            watcher.cancel()
            if not gone:
                self.stream.cancel()  # a no-op once the stream ended


async def _metrics(namespace: str) -> Any:
    import ray
    from starlette.responses import PlainTextResponse

    from serveplane.metrics import render_prometheus

    controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    metrics = await controller.get_metrics.remote()
    by_backend: dict[str, list[str]] = {}
    for endpoint, backends in metrics.get("endpoints", {}).items():
        for backend in backends:
            by_backend.setdefault(backend, []).append(endpoint)
    return PlainTextResponse(render_prometheus(metrics, by_backend),
                             media_type="text/plain; version=0.0.4")


class HTTPProxyActor:
    """Run with ``ray.remote``; serves until killed."""

    def __init__(self, options: dict[str, Any], namespace: str) -> None:
        tracing.setup_process()
        self._options = HTTPOptions.model_validate(options)
        self._namespace = namespace
        self._routes: dict[str, Any] = {"routes": {}}
        self._server: Any = None
        self._app: ProxyApp | None = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._tls: ReloadingContext | None = None
        self._reloader: asyncio.Task | None = None
        self._start_error: Exception | None = None
        self._start()

    def _start(self) -> None:
        import uvicorn

        from serveplane.long_poll import LongPollClient

        client = LongPollClient.get_or_create(CONTROLLER_NAME, self._namespace)
        client.subscribe(keys.ROUTES, self._on_routes)
        self._app = build_app(self._options, self._namespace, self._routes)
        protocol = guarded_protocol(self._app.connections, self._options.request_head_timeout_s)
        tls: dict[str, Any] = {}
        files = TLSFiles.of(self._options)
        if files is not None:
            try:
                self._tls = ReloadingContext(files)
            except InvalidConfigError as exc:
                self._start_error = exc  # ready() raises it, naming the file
                return
            context = self._tls.context
            tls["ssl_context_factory"] = lambda config, default: context
            self._reloader = asyncio.get_running_loop().create_task(self._reload_tls(), name="serveplane-http-tls")
        config = uvicorn.Config(self._app, host=self._options.host, port=self._options.port,
                                log_level="warning", access_log=False, lifespan="off", http=protocol, **tls)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="serveplane-http")
        self._task.add_done_callback(self._on_done)

    async def _reload_tls(self) -> None:
        """Re-read the certificate files when they change (rotation without a restart)."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                if self._tls is not None:
                    self._tls.maybe_reload()
            except Exception:  # noqa: BLE001 - never stop checking; the old certificate serves
                logger.exception("checking the TLS files failed")

    def _on_routes(self, routes: dict[str, Any] | None) -> None:
        self._routes["routes"] = {r: (e, tuple(m)) for r, (e, m) in (routes or {}).items()}

    def _on_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("http server stopped: %r", task.exception())

    async def ready(self) -> str:
        if self._start_error is not None:
            raise self._start_error
        scheme = "https" if self._tls is not None else "http"
        for _ in range(200):
            if self._server is not None and self._server.started:
                return f"{scheme}://{self._options.host}:{self._options.port}"
            if self._task is not None and self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"http proxy could not start on {self._options.host}:"
                                   f"{self._options.port}: {exc!r}")
            await asyncio.sleep(0.05)
        raise RuntimeError("http proxy did not start within 10s")

    async def routes(self) -> dict[str, Any]:
        return dict(self._routes["routes"])

    async def statistics(self) -> dict[str, Any]:
        """In flight, bodies held, their peaks, answers by status, pid and resident memory."""
        stats = self._app.statistics() if self._app is not None else {}
        if self._tls is not None:
            stats["tls_reloads"] = self._tls.reloads
        return stats

    async def wait_for_snapshots(self, snapshot_ids: dict[str, str], timeout_s: float) -> dict[str, str]:
        """Return once this proxy (its routes and the routers of its process) holds these
        long-poll snapshots or later ones: ``{}``, or after ``timeout_s`` the keys still behind.
        Clients call it after a change, so the change is served before their call returns."""
        from serveplane.long_poll import LongPollClient

        client = LongPollClient.get_or_create(CONTROLLER_NAME, self._namespace)
        if not client.behind(snapshot_ids):
            return {}
        return await asyncio.get_running_loop().run_in_executor(
            None, client.wait_for_snapshots, snapshot_ids, timeout_s)
