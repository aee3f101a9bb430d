"""``serveplane/tracing.py`` in one process with the SDK's in-memory exporter (no Ray):
off without a provider, the spans and their parents when on, the switch that keeps it off."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCENARIO = r'''
import asyncio, os, sys, time
from serveplane import tracing
from serveplane.records import ReplicaInfo, RequestMetadata

assert tracing.ENABLED is False, "on without a tracer provider"
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
trace.set_tracer_provider(provider)
os.environ["SERVEPLANE_TRACING"] = "0"
assert tracing.refresh() is False, "SERVEPLANE_TRACING=0 must keep it off"
del os.environ["SERVEPLANE_TRACING"]
assert tracing.refresh() is True

class Request:
    started = time.monotonic() - 0.25
    attempts = 2
    request_id = "r1"
    trace = None

class HTTP:
    method = "GET"
    headers = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    class url:
        path = "/m"

class Answer:
    status_code = 200

async def proxy_answer():
    Request.trace = tracing.capture()  # the handle call is made inside the proxy's span
    return Answer()

assert asyncio.run(tracing.traced_http(HTTP, proxy_answer())).status_code == 200
replica = ReplicaInfo("b", "t1", "serveplane:b#t1", None, 1)
meta = tracing.route_span(Request, "ep", replica, RequestMetadata("r1", "ep"))
assert meta.trace and meta.trace.startswith("00-" + "ab" * 16), meta.trace
shadow_meta = tracing.shadow_span(RequestMetadata("r1", "ep", is_shadow=True), Request.trace, "s", replica)

async def replica_side():
    span = tracing.start_replica(meta, "b", "t1")
    with tracing.user_code_span(replica_side):
        pass
    span.end(ok=False)
    assert tracing.start_replica(RequestMetadata("r2", "ep"), "b", "t1") is None  # untraced caller
    with tracing.user_code_span(replica_side):  # no current span: no span made
        pass
asyncio.run(replica_side())

spans = {s.name: s for s in memory.get_finished_spans()}
assert sorted(s.name for s in memory.get_finished_spans()) == sorted(
    ["serveplane.http", "serveplane.route", "serveplane.shadow", "serveplane.replica", "serveplane.user_code"])
http, route, replica_span, code = (spans[n] for n in ("serveplane.http", "serveplane.route",
                                                      "serveplane.replica", "serveplane.user_code"))
assert http.parent.span_id == int("cd" * 8, 16) and http.context.trace_id == int("ab" * 16, 16)
assert http.attributes["http.response.status_code"] == 200 and http.attributes["url.path"] == "/m"
assert route.parent.span_id == http.context.span_id
assert route.attributes["serveplane.retry"] is True and route.attributes["serveplane.queue_wait_s"] >= 0.25
assert (route.end_time - route.start_time) / 1e9 >= 0.24   # the queue wait is its length
assert replica_span.parent.span_id == route.context.span_id and replica_span.status.status_code.name == "ERROR"
assert code.parent.span_id == replica_span.context.span_id
shadow = spans["serveplane.shadow"]
assert shadow.parent is None and shadow.context.trace_id != http.context.trace_id
assert [l.context.span_id for l in shadow.links] == [http.context.span_id]
print("ok")
'''


def test_tracing_off_without_a_provider_and_parented_spans_when_on() -> None:
    proc = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
