"""OpenTelemetry for ``handle.py --tracing-cost``: an SDK tracer provider whose batch
processor hands spans to an exporter that drops them (the cost of making and processing
spans, not of shipping them). Replica processes run it through ``SERVEPLANE_OTEL_SETUP``."""

from __future__ import annotations

from typing import Any, Sequence


def setup() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
