"""One HTTP request is one trace, parented correctly across the proxy, the outer replica
and the inner replica (three processes), with the SDK's in-memory exporter in the driver
and a test-only file exporter in Ray's processes (``otel_setup.py``)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from tests.conftest import ROOT, run_script

pytestmark = [pytest.mark.ray]

SCENARIO = r'''
import json, os, sys, time
import httpx, ray
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
trace.set_tracer_provider(provider)

ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
         runtime_env={"env_vars": {k: os.environ[k] for k in
                                   ("SERVEPLANE_OTEL_SETUP", "SERVEPLANE_TEST_SPANS", "PYTHONPATH")}})
import serveplane
from serveplane import tracing
from tests.integration.tracing.traced_models import Inner, Outer, shadow

assert tracing.ENABLED
port = int(sys.argv[1]) if len(sys.argv) > 1 else PORT
client = serveplane.start(kv_store="ray://traced", namespace="traced",
                          http_options={"host": "127.0.0.1", "port": port})
opts = {"num_cpus": 0.1}
client.create_backend("inner", Inner, ray_actor_options=opts)
client.create_backend("outer", Outer, ray_actor_options=opts)
client.create_backend("outer_shadow", shadow, ray_actor_options=opts)
client.create_endpoint("inner", backend="inner")
client.create_endpoint("outer", backend="outer", route="/outer")
client.shadow_traffic("outer", "outer_shadow", 1.0)

tracer = trace.get_tracer("the-test")

def spans():
    with open(os.environ["SERVEPLANE_TEST_SPANS"]) as f:
        return [json.loads(line) for line in f]

def shadow_ran():
    return any(s["name"] == "serveplane.replica" and s["attributes"].get("serveplane.shadow") for s in spans())

# The proxy's router learns the shadow backend's replicas one long-poll round after the
# endpoint; a shadow fired before that is dropped (shadows never wait). Until one ran, the
# request is sent again, on a clean span file, so the spans read below are one request's.
for attempt in range(5):
    open(os.environ["SERVEPLANE_TEST_SPANS"], "w").close()
    memory.clear()
    with tracer.start_as_current_span("client") as span:
        headers = {}
        TraceContextTextMapPropagator().inject(headers)
        answer = httpx.get(f"http://127.0.0.1:{port}/outer", headers=headers, timeout=60).json()
    assert answer == {"doubled": [2, 4]}, answer
    deadline = time.monotonic() + 10  # the shadow's spans may end after the answer
    while not shadow_ran() and time.monotonic() < deadline:
        time.sleep(0.05)
    if shadow_ran():
        break
assert shadow_ran(), spans()
(client_span,) = memory.get_finished_spans()
print(json.dumps({"client": {"trace_id": f"{client_span.context.trace_id:032x}",
                             "span_id": f"{client_span.context.span_id:016x}", "pid": os.getpid()}}))
client.shutdown()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_one_http_request_is_one_trace_across_three_processes(tmp_path):
    path = tmp_path / "spans.jsonl"
    out = run_script(SCENARIO.replace("PORT", str(free_port())), env={
        "SERVEPLANE_OTEL_SETUP": "tests.integration.tracing.otel_setup:to_file",
        "SERVEPLANE_TEST_SPANS": str(path), "PYTHONPATH": str(ROOT)})
    client = json.loads(next(line for line in out.splitlines() if line.startswith('{"client"')))["client"]
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {s["span_id"]: s for s in spans}

    def named(name: str, trace_id: str | None = None, **attributes) -> list[dict]:
        return [s for s in spans if s["name"] == name and (trace_id is None or s["trace_id"] == trace_id)
                and all(s["attributes"].get(k) == v for k, v in attributes.items())]

    trace_id = client["trace_id"]
    (http,) = named("serveplane.http", trace_id)
    assert http["parent_id"] == client["span_id"] and http["kind"] == "SERVER"  # from traceparent
    assert http["attributes"]["url.path"] == "/outer" and http["attributes"]["http.response.status_code"] == 200
    (route_outer,) = named("serveplane.route", trace_id, **{"serveplane.backend": "outer"})
    assert route_outer["parent_id"] == http["span_id"] and route_outer["pid"] == http["pid"]
    assert route_outer["attributes"]["serveplane.attempt"] == 1 and route_outer["attributes"]["serveplane.queue_wait_s"] >= 0
    (replica_outer,) = named("serveplane.replica", trace_id, **{"serveplane.backend": "outer"})
    assert replica_outer["parent_id"] == route_outer["span_id"]
    (code_outer,) = [s for s in named("serveplane.user_code", trace_id) if s["parent_id"] == replica_outer["span_id"]]

    # nested handle calls: children of the outer user code, in the outer replica's process
    routes_inner = named("serveplane.route", trace_id, **{"serveplane.backend": "inner"})
    assert len(routes_inner) == 2 and {r["parent_id"] for r in routes_inner} == {code_outer["span_id"]}
    assert {r["pid"] for r in routes_inner} == {replica_outer["pid"]}
    replicas_inner = named("serveplane.replica", trace_id, **{"serveplane.backend": "inner"})
    assert sorted(r["parent_id"] for r in replicas_inner) == sorted(r["span_id"] for r in routes_inner)
    codes_inner = [s for s in named("serveplane.user_code", trace_id)
                   if s["parent_id"] in {r["span_id"] for r in replicas_inner}]
    assert len(codes_inner) == 2

    # three processes besides the driver
    pids = {http["pid"], replica_outer["pid"], replicas_inner[0]["pid"]}
    assert len(pids) == 3 and client["pid"] not in pids

    # the trace holds exactly these spans: the batch and the shadow are traces of their own
    in_trace = sorted(s["name"] for s in spans if s["trace_id"] == trace_id)
    assert in_trace == sorted(["serveplane.http", "serveplane.route", "serveplane.route", "serveplane.route",
                               "serveplane.replica", "serveplane.replica", "serveplane.replica",
                               "serveplane.user_code", "serveplane.user_code", "serveplane.user_code"])

    # the batch span links the requests it ran
    batches = named("serveplane.batch")
    assert batches and all(b["trace_id"] != trace_id and b["parent_id"] is None for b in batches)
    linked = [link["span_id"] for b in batches for link in b["links"]]
    assert sorted(linked) == sorted(c["span_id"] for c in codes_inner)
    assert sum(b["attributes"]["serveplane.batch_size"] for b in batches) == 2

    # the shadow: its own trace, linked to the primary's proxy span; its replica span under it
    (shadow,) = named("serveplane.shadow", **{"serveplane.backend": "outer_shadow"})
    assert shadow["trace_id"] != trace_id and shadow["parent_id"] is None
    assert shadow["links"] == [{"trace_id": trace_id, "span_id": http["span_id"]}]
    (shadow_replica,) = named("serveplane.replica", shadow["trace_id"], **{"serveplane.shadow": True})
    assert shadow_replica["parent_id"] == shadow["span_id"]
    assert all(s["parent_id"] is None or s["parent_id"] in by_id or s["parent_id"] == client["span_id"]
               for s in spans)
