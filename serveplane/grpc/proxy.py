"""The gRPC proxy actor: grpcio's asyncio server in the actor's event loop, serving the
user's services (``GRPCOptions.servicer_functions``) by routing every RPC to an endpoint.

Checks run in this order; each failure answers with a status (``status.py``) and the proxy
keeps serving:

1. API keys (``api_keys`` / ``api_keys_file``): no valid ``authorization: Bearer <key>``
   metadata is UNAUTHENTICATED (``grpc.health.v1.Health`` needs no key; reflection does);
2. rate limit (``rate_limit_rps``, per key, or per peer address without keys) and then
   ``max_concurrent_requests`` in flight: RESOURCE_EXHAUSTED with ``retry-after``;
3. the method: a private or control name is NOT_FOUND (``exposure.check_name_over_http``),
   and so is an RPC of no registered service;
4. the endpoint (``directory.py``): the ``endpoint`` metadata key, else the one endpoint
   whose backends define the method;
5. one handle call ``method_name=<RPC method>`` with the request message; ``session-id`` and
   ``shard-key`` metadata become the handle's options and the call's gRPC deadline its
   ``timeout_s`` (``request_timeout_s`` when it has none). A server-streaming RPC is a
   streaming handle call whose chunks are sent as they come. A client that cancels, or
   whose deadline passes, cancels the handle call (and so the replica's work).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, AsyncIterator, Callable

from serveplane.config import GRPCOptions
from serveplane.exceptions import MethodNotExposedError
from serveplane.exposure import check_name_over_http
from serveplane.grpc.directory import EndpointDirectory, Unresolved
from serveplane.grpc.servicer import MethodSpec, build_handlers, read_services
from serveplane.grpc.status import Outcome, internal_error, outcome_of, retry_later
from serveplane.http.auth import ApiKeys, bearer_token
from serveplane.http.limits import Admission, TokenBuckets
from serveplane.records import CONTROLLER_NAME, keys
from serveplane.tls import GRPCCertificates, TLSFiles

logger = logging.getLogger("serveplane.grpc")

ENDPOINT_KEY = "endpoint"
SESSION_KEY = "session-id"
SHARD_KEY = "shard-key"
SETTLE_WAIT_S = 2.0  # how long an RPC may wait for the directory's first values


def _metadata(context: Any) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _peer_address(peer: str | None) -> str:
    """``ipv4:127.0.0.1:5555`` -> ``127.0.0.1`` (the bucket of a caller without a key)."""
    if not peer:
        return "unknown"
    address = peer.split(":", 1)[-1]
    return address.rsplit(":", 1)[0] if ":" in address else address


class GRPCProxy:
    """The behaviors of every routed method, and the proxy's counters."""

    def __init__(self, options: GRPCOptions, namespace: str, directory: EndpointDirectory,
                 changed: asyncio.Event) -> None:
        self.options = options
        self.namespace = namespace
        self.directory = directory
        self._changed = changed
        self.keys = ApiKeys([k.get_secret_value() for k in options.api_keys]
                            if options.api_keys is not None else None, options.api_keys_file)
        self.buckets = (TokenBuckets(options.rate_limit_rps, options.burst)
                        if options.rate_limit_rps is not None else None)
        # bodies are bounded by max_request_bytes in grpc itself: only requests are counted
        self.admission = Admission(options.max_concurrent_requests, 0)
        self.answered: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<GRPCProxy {self.namespace!r} {self.admission!r} answered={self.answered}>"

    # -- the checks ------------------------------------------------------------------------
    def caller_refused(self, metadata: dict[str, str], peer: str | None) -> Outcome | None:
        """API key and rate limit: the checks that come before anything is counted."""
        caller = self.keys.match(bearer_token(metadata.get("authorization"))) if self.keys.enabled else None
        if self.keys.enabled and caller is None:
            return Outcome("UNAUTHENTICATED", "missing or invalid API key; send the metadata "
                                              "authorization: Bearer <key>")
        if self.buckets is not None:
            wait = self.buckets.take(caller or f"address:{_peer_address(peer)}")
            if wait > 0:
                retry = max(1, int(wait + 0.999))
                return retry_later(f"rate limit of {self.options.rate_limit_rps:g} requests/s exceeded; "
                                   f"retry after {retry}s", retry)
        return None

    async def _route(self, spec: MethodSpec, metadata: dict[str, str], context: Any) -> tuple[str, dict[str, Any]]:
        try:
            check_name_over_http(spec.name)
        except MethodNotExposedError:
            raise Unresolved("NOT_FOUND", f"method {spec.name!r} is never served") from None
        named = metadata.get(ENDPOINT_KEY) or None
        try:
            endpoint = self.directory.resolve(named, spec.name)
        except Unresolved:
            if self.directory.settled:
                raise
            remaining = context.time_remaining()  # a change this proxy has not heard of yet
            await self.wait_settled(SETTLE_WAIT_S if remaining is None else min(SETTLE_WAIT_S, remaining))
            endpoint = self.directory.resolve(named, spec.name)
        remaining = context.time_remaining()
        # the client's deadline wins, longer or shorter; request_timeout_s bounds a call without one
        timeout_s = self.options.request_timeout_s
        if remaining is not None:
            if remaining <= 0:
                raise asyncio.TimeoutError()
            timeout_s = remaining
        opts: dict[str, Any] = {"method_name": spec.name, "timeout_s": timeout_s}
        if metadata.get(SESSION_KEY):
            opts["session_id"] = metadata[SESSION_KEY]
        if metadata.get(SHARD_KEY):
            opts["shard_key"] = metadata[SHARD_KEY]
        return endpoint, opts

    async def wait_settled(self, limit_s: float) -> bool:
        """Wait (at most ``limit_s``) until the directory holds a value of every key it follows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while not self.directory.settled:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            if self.directory.settled:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return self.directory.settled
        return True

    def _handle(self, endpoint: str) -> Any:
        from serveplane.router import get_handle

        return get_handle(endpoint, CONTROLLER_NAME, self.namespace)

    def _count(self, code: str) -> None:
        self.answered[code] = self.answered.get(code, 0) + 1

    async def abort(self, context: Any, outcome: Outcome, endpoint: str | None = None,
                    cause: BaseException | None = None) -> None:
        import grpc

        if outcome.error_id is not None:
            where = f"endpoint {endpoint!r}" if endpoint else "the grpc proxy"
            text = str(cause).strip() if cause is not None else ""
            logger.error("error %s in %s: %s: %s", outcome.error_id, where, type(cause).__name__, text,
                         exc_info=endpoint is None and cause is not None)
        self._count(outcome.code)
        await context.abort(grpc.StatusCode[outcome.code], outcome.details,
                            trailing_metadata=outcome.metadata)

    def _failed(self, exc: BaseException, endpoint: str | None) -> Outcome:
        if isinstance(exc, Unresolved):
            return Outcome(exc.code, str(exc))
        if endpoint is None and not isinstance(exc, asyncio.TimeoutError):
            return internal_error(exc, self.options.debug_errors)
        return outcome_of(exc, endpoint or "?", self.options.debug_errors)

    # -- behaviors ---------------------------------------------------------------------------
    def unary(self, spec: MethodSpec) -> Callable[[Any, Any], Any]:
        async def call(request: Any, context: Any) -> Any:
            metadata = _metadata(context)
            refused = self.caller_refused(metadata, context.peer())
            if refused is None and not self.admission.enter():
                refused = retry_later(f"the proxy is at max_concurrent_requests="
                                      f"{self.admission.max_in_flight}; retry after 1s")
            if refused is not None:
                await self.abort(context, refused)
            endpoint: str | None = None
            try:
                endpoint, opts = await self._route(spec, metadata, context)
                # timeout_s is the request's deadline: the router and the replica enforce it
                result = await self._handle(endpoint).options(**opts).remote(request)
            except asyncio.CancelledError:
                self._count("CANCELLED")
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is a status, never a traceback
                failure, cause = self._failed(exc, endpoint), exc
            else:
                self._count("OK")
                return result
            finally:
                self.admission.leave()
            await self.abort(context, failure, endpoint, cause)
        return call

    def stream(self, spec: MethodSpec) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            metadata = _metadata(context)
            refused = self.caller_refused(metadata, context.peer())
            if refused is None and not self.admission.enter():
                refused = retry_later(f"the proxy is at max_concurrent_requests="
                                      f"{self.admission.max_in_flight}; retry after 1s")
            if refused is not None:
                await self.abort(context, refused)
            endpoint: str | None = None
            stream: Any = None
            finished = False
            failure: Outcome | None = None
            cause: BaseException | None = None
            try:
                endpoint, opts = await self._route(spec, metadata, context)
                stream = self._handle(endpoint).options(stream=True, **opts).remote(request)
                async for chunk in stream:
                    yield chunk
                finished = True
                self._count("OK")
            except asyncio.CancelledError:
                self._count("CANCELLED")
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is a status
                failure, cause, finished = self._failed(exc, endpoint), exc, True
            finally:
                self.admission.leave()
                if stream is not None and not finished:
                    stream.cancel()  # the client went away: stop the replica's generator
            if failure is not None:
                await self.abort(context, failure, endpoint, cause)
        return call

    def unsupported(self, spec: MethodSpec) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def call(_requests: Any, context: Any) -> AsyncIterator[Any]:
            refused = self.caller_refused(_metadata(context), context.peer())
            await self.abort(context, refused or Outcome(
                "UNIMPLEMENTED", f"{spec.path} streams its requests; serveplane serves unary and "
                                 "server-streaming RPCs"))
            yield  # an async generator: grpc's stream-stream behavior
        return call

    def statistics(self) -> dict[str, Any]:
        return {"in_flight": self.admission.in_flight,
                "max_concurrent_requests": self.admission.max_in_flight,
                "peak_in_flight": self.admission.peak_in_flight,
                "answered": dict(sorted(self.answered.items())), "pid": os.getpid()}


class GRPCProxyActor:
    """Run with ``ray.remote``; serves until killed. Started by ``serveplane.start``."""

    def __init__(self, options: dict[str, Any], namespace: str) -> None:
        from serveplane.long_poll import LongPollClient

        self._options = GRPCOptions.model_validate(options)
        self._namespace = namespace
        self._port: int | None = None
        self._error: BaseException | None = None
        self._task: asyncio.Task | None = None
        self._certificates: GRPCCertificates | None = None
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        client = LongPollClient.get_or_create(CONTROLLER_NAME, namespace)

        def on_change() -> None:
            loop.call_soon_threadsafe(changed.set)

        self._directory = EndpointDirectory(client.subscribe, client.unsubscribe, on_change)
        self._proxy = GRPCProxy(self._options, namespace, self._directory, changed)
        try:
            from serveplane.grpc import require_grpc

            require_grpc()
            self._specs = read_services(self._options.servicer_functions)
            files = TLSFiles.of(self._options)
            self._certificates = GRPCCertificates(files) if files is not None else None
        except Exception as exc:  # noqa: BLE001 - ready() reports it
            self._error = exc
            return
        self._directory.start()
        self._task = loop.create_task(self._serve(), name="serveplane-grpc")
        self._task.add_done_callback(self._on_done)

    async def _serve(self) -> None:
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        proxy = self._proxy
        interceptors = [_reflection_guard(proxy)] if proxy.keys.enabled else []
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.so_reuseport", 0),  # a port in use is an error, never a second listener
            ("grpc.max_receive_message_length", self._options.max_request_bytes),
            # a connection that never finishes its handshake (TLS, the HTTP/2 preface and
            # settings) is closed, and one connection holds a bounded number of streams
            ("grpc.server_handshake_timeout_ms", int(self._options.request_head_timeout_s * 1000)),
            ("grpc.max_concurrent_streams", self._options.max_streams_per_connection)])
        services = build_handlers(self._specs, proxy.unary, proxy.stream, proxy.unsupported)
        for service, handlers in services.items():
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
            if hasattr(server, "add_registered_method_handlers"):
                server.add_registered_method_handlers(service, handlers)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        server.add_generic_rpc_handlers((_not_found(proxy),))
        address = f"{self._options.host}:{self._options.port}"
        if self._certificates is not None:
            self._port = server.add_secure_port(address, self._certificates.credentials())
        else:
            self._port = server.add_insecure_port(address)
        await server.start()
        for name in ("", *services):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        try:
            await server.wait_for_termination()
        finally:
            await server.stop(grace=None)

    def _on_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._error = task.exception()
            logger.error("grpc server stopped: %r", task.exception())

    async def ready(self) -> str:
        """``host:port`` once the server listens; raises why it cannot."""
        from serveplane.exceptions import InvalidConfigError

        for _ in range(200):
            if self._error is not None:
                if isinstance(self._error, InvalidConfigError):
                    raise self._error
                raise RuntimeError(f"grpc proxy could not start on {self._options.host}:"
                                   f"{self._options.port}: {self._error!r}")
            if self._port:
                return f"{self._options.host}:{self._port}"
            await asyncio.sleep(0.05)
        raise RuntimeError("grpc proxy did not start within 10s")

    async def statistics(self) -> dict[str, Any]:
        """In flight, its peak, answers by status code, pid."""
        return self._proxy.statistics()

    async def wait_for_snapshots(self, snapshot_ids: dict[str, str], timeout_s: float) -> dict[str, str]:
        """Return once this proxy holds these long-poll snapshots or later ones and has heard
        of every endpoint and backend they name (read your writes): ``{}``, or after
        ``timeout_s`` the keys still behind."""
        from serveplane.long_poll import LongPollClient

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        client = LongPollClient.get_or_create(CONTROLLER_NAME, self._namespace)
        if client.behind(snapshot_ids):
            behind = await loop.run_in_executor(None, client.wait_for_snapshots, snapshot_ids, timeout_s)
            if behind:
                return behind
        # the keys it began to follow because of the change
        settled = await self._proxy.wait_settled(max(0.0, deadline - loop.time()))
        return {} if settled else {keys.ENDPOINTS: "?"}


def _refusing(proxy: GRPCProxy, outcome_for: Callable[[Any], Outcome | None]) -> Any:
    """A stream-stream handler that answers with a status (accepts any RPC shape)."""
    import grpc

    async def refuse(_requests: Any, context: Any) -> AsyncIterator[Any]:
        outcome = outcome_for(context)
        if outcome is not None:
            await proxy.abort(context, outcome)
        yield
    return grpc.stream_stream_rpc_method_handler(refuse)


def _not_found(proxy: GRPCProxy) -> Any:
    """Registered last: an RPC of no registered service is NOT_FOUND (after the key check),
    not grpc's UNIMPLEMENTED."""
    import grpc

    class NotFound(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            method = str(details.method)[:200]

            def outcome(context: Any) -> Outcome:
                return proxy.caller_refused(_metadata(context), context.peer()) or Outcome(
                    "NOT_FOUND", f"no service of this server has method {method!r}")
            return _refusing(proxy, outcome)
    return NotFound()


def _reflection_guard(proxy: GRPCProxy) -> Any:
    """With API keys, reflection needs a key too (health never does)."""
    import grpc

    class ReflectionGuard(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            if str(details.method).startswith("/grpc.reflection."):
                metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
                if proxy.caller_refused(metadata, None) is not None:
                    return _refusing(proxy, lambda _context: Outcome(
                        "UNAUTHENTICATED", "missing or invalid API key; send the metadata "
                                           "authorization: Bearer <key>"))
            return await continuation(details)
    return ReflectionGuard()
