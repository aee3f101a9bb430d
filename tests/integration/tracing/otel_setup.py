"""Test-only OpenTelemetry setup for every process of a traced scenario.

``SERVEPLANE_OTEL_SETUP=tests.integration.tracing.otel_setup:to_file`` (passed to Ray's
processes through the job's ``runtime_env``) makes each process, the proxy and every
replica, install an SDK ``TracerProvider`` whose ``SimpleSpanProcessor`` appends every
finished span, as one JSON line, to ``$SERVEPLANE_TEST_SPANS``. The test reads the file
back: spans from all processes, in one place. (The driver uses the SDK's in-memory exporter.)
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence


def span_record(span: Any) -> dict[str, Any]:
    ctx = span.get_span_context()
    return {"name": span.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
            "links": [{"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
                      for link in span.links],
            "attributes": dict(span.attributes or {}), "pid": os.getpid(), "kind": span.kind.name,
            "status": span.status.status_code.name}


def to_file() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    path = os.environ["SERVEPLANE_TEST_SPANS"]

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            lines = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, lines.encode())  # one write per export: lines never interleave
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
