"""OpenTelemetry spans for the request path, when ``opentelemetry-api`` is installed and a
tracer provider is configured (``pip install serveplane[otel]``).

Off, it costs one module-level bool check per hook: every hook on the request path reads
``if tracing.ENABLED:`` before calling in here, and ``ENABLED`` is False unless the API
imports and a real provider (not OpenTelemetry's default proxy) is set. Set
``SERVEPLANE_TRACING=0`` to keep it off even then.

One request is one trace:

- ``serveplane.http`` (server span, in the proxy): parented on the incoming W3C
  ``traceparent`` header, if any; the route, the endpoint, the status;
- ``serveplane.route`` (in the caller's router, one per attempt): starts when the request
  was submitted, ends when it is sent, so its length is the queue wait; the backend and the
  replica chosen, the attempt number (``> 1`` is a retry);
- ``serveplane.replica`` (server span, in the replica process): parented on the route span
  through ``RequestMetadata.trace``, the W3C ``traceparent`` of the route span;
- ``serveplane.user_code``: the user's method; nested handle calls made from it are its
  children (the context travels in contextvars, into worker threads too);
- ``serveplane.batch``: a batch of ``@serveplane.batch`` / ``@accept_batch`` calls runs once
  for many requests, so it is the root of a trace of its own with a link to each request's
  replica span;
- ``serveplane.shadow``: each shadow copy is the root of its own trace, linked to the span
  the primary call was made in (the proxy's, or the caller's own), so shadows never inflate
  the primary's trace; the shadow's replica span is its child.

Every process must have a provider of its own: the proxy and replica processes run
``SERVEPLANE_OTEL_SETUP=package.module:function`` (if set) when they start, a function
that configures OpenTelemetry (an exporter, a provider). Ray passes environment variables to
actors through the job's ``runtime_env``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from typing import Any, Iterator, Sequence

logger = logging.getLogger(__name__)

ENABLED = False
NO_SPAN = contextlib.nullcontext()
SETUP_ENV = "SERVEPLANE_OTEL_SETUP"
SWITCH_ENV = "SERVEPLANE_TRACING"
_tracer: Any = None
_setup_done = False


def refresh() -> bool:
    """Turn tracing on if the API imports and a provider is configured; returns ``ENABLED``.
    Called at import, by ``setup_process`` and by ``serveplane.start``/``connect``; call it
    after configuring OpenTelemetry in a process that already imported serveplane."""
    global ENABLED, _tracer
    if os.environ.get(SWITCH_ENV, "1") == "0":
        ENABLED = False
        return False
    try:
        from opentelemetry import trace
    except ImportError:
        ENABLED = False
        return False
    provider = trace.get_tracer_provider()
    ENABLED = type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")
    _tracer = trace.get_tracer("serveplane") if ENABLED else None
    return ENABLED


def setup_process() -> bool:
    """Run ``$SERVEPLANE_OTEL_SETUP`` once in this process (proxy and replica processes
    call this when they start), then ``refresh``."""
    global _setup_done
    target = os.environ.get(SETUP_ENV)
    if target and not _setup_done:
        _setup_done = True
        module, _, name = target.partition(":")
        try:
            getattr(importlib.import_module(module), name or "setup")()
        except Exception:  # noqa: BLE001 - tracing must never stop a replica or proxy
            logger.exception("%s=%r failed; tracing stays off in this process", SETUP_ENV, target)
    return refresh()


# -- context --------------------------------------------------------------------------------
def capture() -> Any:
    """The current OpenTelemetry context (a handle call remembers where it was made)."""
    from opentelemetry import context

    return context.get_current()


def _traceparent(span: Any) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _context_of(traceparent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent} if traceparent else {})


def _ns_ago(seconds: float) -> int:
    return time.time_ns() - int(max(0.0, seconds) * 1e9)


# -- the proxy ------------------------------------------------------------------------------
async def traced_http(request: Any, answer: Any) -> Any:
    """Await ``answer`` (the proxy's response to ``request``) inside the request's
    ``serveplane.http`` span, parented on its ``traceparent`` header. The span ends when the
    response is ready (a streamed body is sent after); the proxy's own paths (``/-/...``)
    are not traced."""
    from opentelemetry import context
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    path = request.url.path
    if path.startswith("/-/"):
        return await answer
    parent = TraceContextTextMapPropagator().extract({k.lower(): v for k, v in request.headers.items()})
    span = _tracer.start_span("serveplane.http", context=parent, kind=SpanKind.SERVER, attributes={
        "http.request.method": request.method, "url.path": path})
    token = context.attach(_set_span(span, parent))
    try:
        response = await answer
        status = getattr(response, "status_code", 200)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        return response
    except BaseException as exc:
        span.record_exception(exc)
        _error(span, exc)
        raise
    finally:
        context.detach(token)
        span.end()


def _set_span(span: Any, parent: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span, parent)


def _error(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


# -- the router -----------------------------------------------------------------------------
def route_span(request: Any, endpoint: str, replica: Any, meta: Any) -> Any:
    """A ``serveplane.route`` span from the request's submission to now (its queue wait);
    returns ``meta`` carrying the span's ``traceparent``."""
    from dataclasses import replace

    waited = time.monotonic() - request.started
    span = _tracer.start_span("serveplane.route", context=getattr(request, "trace", None),
                              start_time=_ns_ago(waited), attributes={
                                  "serveplane.endpoint": endpoint, "serveplane.backend": replica.backend,
                                  "serveplane.replica": replica.replica_tag,
                                  "serveplane.queue_wait_s": waited, "serveplane.attempt": request.attempts,
                                  "serveplane.retry": request.attempts > 1,
                                  "serveplane.request_id": request.request_id})
    span.end()
    return replace(meta, trace=_traceparent(span))


def shadow_span(meta: Any, parent: Any, backend: str, replica: Any) -> Any:
    """A shadow copy's own trace, linked to the span the primary call was made in
    (``parent``, the request's captured context); returns ``meta`` carrying the shadow
    span's ``traceparent``."""
    from dataclasses import replace

    from opentelemetry import trace

    links = []
    linked = trace.get_current_span(parent).get_span_context() if parent is not None else None
    if linked is not None and linked.is_valid:
        links.append(trace.Link(linked, {"serveplane.link": "primary"}))
    span = _tracer.start_span("serveplane.shadow", context=_context_of(None), links=links, attributes={
        "serveplane.endpoint": meta.endpoint, "serveplane.backend": backend,
        "serveplane.replica": replica.replica_tag, "serveplane.request_id": meta.request_id})
    span.end()
    return replace(meta, trace=_traceparent(span))


# -- the replica ----------------------------------------------------------------------------
class ReplicaSpan:
    """``serveplane.replica``, current from ``start_replica`` until ``end``."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token

    def end(self, ok: bool) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        if not ok:
            self.span.set_status(Status(StatusCode.ERROR, "the call raised"))
        context.detach(self.token)
        self.span.end()


def start_replica(meta: Any, backend: str, replica_tag: str) -> ReplicaSpan | None:
    """The replica's span of one call, parented on the caller's route span; None when the
    caller did not trace it."""
    from opentelemetry import context
    from opentelemetry.trace import SpanKind

    if meta.trace is None:
        return None
    parent = _context_of(meta.trace)
    span = _tracer.start_span("serveplane.replica", context=parent, kind=SpanKind.SERVER, attributes={
        "serveplane.endpoint": meta.endpoint, "serveplane.backend": backend,
        "serveplane.replica": replica_tag, "serveplane.method": meta.method_name,
        "serveplane.shadow": meta.is_shadow, "serveplane.request_id": meta.request_id,
        "process.pid": os.getpid()})
    return ReplicaSpan(span, context.attach(_set_span(span, parent)))


@contextlib.contextmanager
def user_code_span(method: Any) -> Iterator[None]:
    """``serveplane.user_code`` around the user's method, current while it runs; only in a
    traced request (a replica never starts traces of its own)."""
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():
        yield
        return
    with _tracer.start_as_current_span("serveplane.user_code", attributes={
            "code.function": getattr(method, "__qualname__", None) or type(method).__qualname__}):
        yield


@contextlib.contextmanager
def batch_span(name: str, contexts: Sequence[Any]) -> Iterator[None]:
    """One batch: a trace of its own, linked to the span of each request in it."""
    from opentelemetry import trace

    links = []
    for ctx in contexts:
        span_context = trace.get_current_span(ctx).get_span_context() if ctx is not None else None
        if span_context is not None and span_context.is_valid:
            links.append(trace.Link(span_context, {"serveplane.link": "batched request"}))
    if not links:  # none of its requests is traced
        yield
        return
    with _tracer.start_as_current_span("serveplane.batch", context=_context_of(None), links=links,
                                       attributes={"serveplane.batch": name,
                                                   "serveplane.batch_size": len(contexts)}):
        yield


refresh()
