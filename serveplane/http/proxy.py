"""The HTTP proxy actor: routes come from the controller by long-poll.

Invariants: no request can take the proxy down. A body over ``max_body_bytes`` gets 413
before it is read whole; a user error gets 500 with an error id that is also logged; a
request past ``request_timeout_s`` gets 504; back-pressure gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from serveplane.config import HTTPOptions
from serveplane.exceptions import BackPressureError, NoReplicasError, NotFoundError, RequestTimeoutError
from serveplane.http.request import HTTPRequest
from serveplane.records import CONTROLLER_NAME, keys

logger = logging.getLogger("serveplane.http")

HEADER_METHOD = "x-serve-call-method"
HEADER_SHARD = "x-serve-shard-key"
HEADER_SESSION = "x-serve-session-id"


def match_route(routes: dict[str, tuple[str, tuple[str, ...]]], path: str) -> tuple[str, tuple[str, ...]] | None:
    """Longest route that equals the path or is a prefix of it at a '/' boundary."""
    best = None
    for route, target in routes.items():
        if path == route or route == "/" or path.startswith(route.rstrip("/") + "/"):
            if best is None or len(route) > len(best[0]):
                best = (route, target)
    return best[1] if best else None


def build_app(options: HTTPOptions, namespace: str, routes_ref: dict[str, Any]) -> Any:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    from serveplane.router import get_handle

    async def serve(request: Request) -> Response:
        path = request.url.path
        if path == "/-/healthz":
            return PlainTextResponse("ok")
        if path == "/-/routes":
            return JSONResponse({r: {"endpoint": e, "methods": list(m)}
                                 for r, (e, m) in routes_ref["routes"].items()})
        if path == "/-/metrics":
            return await _metrics(namespace)
        target = match_route(routes_ref["routes"], path)
        if target is None:
            return JSONResponse({"error": f"no endpoint serves path {path!r}"}, status_code=404)
        endpoint, methods = target
        if request.method not in methods:
            return JSONResponse({"error": f"method {request.method} is not allowed for {path!r}; "
                                          f"allowed: {', '.join(methods)}"},
                                status_code=405, headers={"Allow": ", ".join(methods)})
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > options.max_body_bytes:
            return JSONResponse({"error": f"body of {length} bytes exceeds max_body_bytes="
                                          f"{options.max_body_bytes}"}, status_code=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > options.max_body_bytes:
                return JSONResponse({"error": f"body exceeds max_body_bytes={options.max_body_bytes}"},
                                    status_code=413)
            chunks.append(chunk)
        http_request = HTTPRequest(method=request.method, path=path,
                                   query_params=dict(request.query_params),
                                   headers={k.lower(): v for k, v in request.headers.items()},
                                   body=b"".join(chunks))
        handle = get_handle(endpoint, CONTROLLER_NAME, namespace)
        opts: dict[str, Any] = {"timeout_s": options.request_timeout_s}
        if request.headers.get(HEADER_METHOD):
            opts["method_name"] = request.headers[HEADER_METHOD]
        if request.headers.get(HEADER_SHARD):
            opts["shard_key"] = request.headers[HEADER_SHARD]
        if request.headers.get(HEADER_SESSION):
            opts["session_id"] = request.headers[HEADER_SESSION]
        try:
            result = await asyncio.wait_for(handle.options(**opts).remote(http_request),
                                            timeout=options.request_timeout_s)
        except (asyncio.TimeoutError, RequestTimeoutError, NoReplicasError):
            return JSONResponse({"error": f"request to endpoint {endpoint!r} timed out after "
                                          f"{options.request_timeout_s:g}s"}, status_code=504)
        except BackPressureError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        except NotFoundError as exc:  # the endpoint was deleted while the request waited
            return JSONResponse({"error": str(exc)}, status_code=404)
        except Exception as exc:  # noqa: BLE001 - user code failed: 500 with an id
            error_id = uuid.uuid4().hex[:12]
            logger.error("error %s in endpoint %r: %s", error_id, endpoint, exc)
            return JSONResponse({"error": f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}",
                                 "error_id": error_id}, status_code=500)
        return to_response(result)

    return _Mounted(serve)


def to_response(result: Any) -> Any:
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

    from serveplane.replica.streaming import CollectedStream

    if isinstance(result, CollectedStream):
        response = StreamingResponse(iter(result.chunks), status_code=result.status_code,
                                     media_type=result.media_type)
        response.raw_headers = [h for h in result.headers if h[0].lower() != b"content-length"]
        return response
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


class _Mounted:
    """A minimal ASGI app: every path goes to ``serve`` (routes are dynamic)."""

    def __init__(self, serve: Any) -> None:
        self._serve = serve

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
        response = await self._serve(Request(scope, receive))
        await response(scope, receive, send)


class HTTPProxyActor:
    """Run with ``ray.remote``; serves until killed."""

    def __init__(self, options: dict[str, Any], namespace: str) -> None:
        self._options = HTTPOptions.model_validate(options)
        self._namespace = namespace
        self._routes: dict[str, Any] = {"routes": {}}
        self._server: Any = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._start()

    def _start(self) -> None:
        import uvicorn

        from serveplane.long_poll import LongPollClient

        client = LongPollClient.get_or_create(CONTROLLER_NAME, self._namespace)
        client.subscribe(keys.ROUTES, self._on_routes)
        app = build_app(self._options, self._namespace, self._routes)
        config = uvicorn.Config(app, host=self._options.host, port=self._options.port,
                                log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="serveplane-http")
        self._task.add_done_callback(self._on_done)

    def _on_routes(self, routes: dict[str, Any] | None) -> None:
        self._routes["routes"] = {r: (e, tuple(m)) for r, (e, m) in (routes or {}).items()}

    def _on_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("http server stopped: %r", task.exception())

    async def ready(self) -> str:
        for _ in range(200):
            if self._server is not None and self._server.started:
                return f"http://{self._options.host}:{self._options.port}"
            if self._task is not None and self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"http proxy could not start on {self._options.host}:"
                                   f"{self._options.port}: {exc!r}")
            await asyncio.sleep(0.05)
        raise RuntimeError("http proxy did not start within 10s")

    async def routes(self) -> dict[str, Any]:
        return dict(self._routes["routes"])

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
