"""Prometheus exposition of the metrics summary, written by ``prometheus_client``.

Families: service gauges (``serveplane_*``), per replica (``serveplane_replica_*``), per
shadow backend (``serveplane_shadow_*``), per endpoint and backend what routers saw
(``serveplane_requests_total``, ``serveplane_request_errors_total{kind}`` and the
histogram ``serveplane_request_latency_seconds``), and rollouts
(``serveplane_rollout_step``, ``serveplane_rollout_weight``, ``serveplane_rollout_reading``,
``serveplane_rollout_rollbacks_total``).
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from serveplane.rollout.histogram import BOUNDS

# (summary key, kind, help, exposed name when it differs: counters get a "_total" suffix)
_REPLICA_METRICS: list[tuple[str, ...]] = [
    ("total_requests", "counter", "Requests handled by the replica.", "requests"),
    ("successful_requests", "counter", "Requests that returned without error."),
    ("failed_requests", "counter", "Requests whose user code raised."),
    ("request_rate", "gauge", "Requests per second over the sliding window."),
    ("avg_latency_s", "gauge", "Mean request latency over the sliding window, seconds."),
    ("active_requests", "gauge", "Requests running on the replica now."),
    ("queue_depth", "gauge", "Requests queued in routers for this replica's backend, per replica."),
    ("assigned_sessions", "gauge", "Sessions seen by the replica in the last 10 minutes."),
    ("capacity_utilization", "gauge", "active_requests / max_concurrent_queries."),
]
_SERVICE_METRICS = [
    ("sessions", "gauge", "Live sessions."),
    ("healthy_replicas", "gauge", "Replicas passing health checks."),
    ("total_replicas", "gauge", "Running replicas."),
    ("total_request_rate", "gauge", "Requests per second over all replicas."),
    ("avg_queue_depth", "gauge", "Requests queued in routers per replica."),
    ("avg_capacity_utilization", "gauge", "Mean capacity utilization of replicas."),
    ("sessions_per_replica", "gauge", "Live sessions per running replica."),
    ("scaling_events", "counter", "Autoscaling events recorded."),
]
_SHADOW_METRICS: list[tuple[str, ...]] = [
    ("count", "counter", "Shadow requests sent.", "requests"),
    ("errors", "counter", "Shadow requests that failed."),
    ("avg_latency_s", "gauge", "Mean shadow latency, seconds."),
    ("agreement", "gauge", "Share of shadow answers equal to the primary's."),
]
_READINGS = ("error_rate", "latency_ratio", "canary_p99_s", "baseline_p99_s", "canary_requests",
             "canary_timed_out", "canary_expired", "canary_refused", "canary_cancelled", "shadow_agreement")


def _family(kind: str, name: str, help_text: str, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _named(spec: tuple[str, ...]) -> tuple[str, str, str, str]:
    key, kind, help_text = spec[:3]
    return key, kind, help_text, spec[3] if len(spec) > 3 else key


class _SummaryCollector:
    def __init__(self, summary: dict[str, Any], endpoint_of: dict[str, list[str]]) -> None:
        self.summary = summary
        self.endpoint_of = endpoint_of

    def collect(self) -> Iterator[Metric]:
        s = self.summary
        for key, kind, help_text in _SERVICE_METRICS:
            family = _family(kind, f"serveplane_{key}", help_text, [])
            family.add_metric([], float(s["service"].get(key, 0) or 0))
            yield family
        for spec in _REPLICA_METRICS:
            key, kind, help_text, name = _named(spec)
            family = _family(kind, f"serveplane_replica_{name}", help_text, ["endpoint", "backend", "replica"])
            for replica, data in sorted(s["replicas"].items()):
                for endpoint in self.endpoint_of.get(data["backend"]) or [""]:
                    family.add_metric([endpoint, data["backend"], replica], float(data.get(key, 0) or 0))
            yield family
        for spec in _SHADOW_METRICS:
            key, kind, help_text, name = _named(spec)
            family = _family(kind, f"serveplane_shadow_{name}", help_text, ["backend"])
            for backend, data in sorted(s.get("shadows", {}).items()):
                family.add_metric([backend], float(data.get(key, 0) or 0))
            yield family
        yield from self._requests(s.get("requests", {}))
        yield from self._rollouts(s.get("rollouts", {}), s.get("rollbacks", []))

    def _requests(self, requests: dict[str, dict[str, dict[str, Any]]]) -> Iterator[Metric]:
        total = CounterMetricFamily("serveplane_requests", "Answers routers got (or gave up on), "
                                    "by endpoint and backend.", labels=["endpoint", "backend"])
        errors = CounterMetricFamily("serveplane_request_errors", "Failed requests by kind: 'application' "
                                     "(user code raised), 'replica' (its replica died or was unreachable), "
                                     "'timed_out' (its deadline passed while it ran), 'expired' (queued past "
                                     "its deadline, never ran) or 'refused' (back-pressure).",
                                     labels=["endpoint", "backend", "kind"])
        cancelled = CounterMetricFamily("serveplane_requests_cancelled", "Requests their caller cancelled "
                                        "or abandoned (not errors).", labels=["endpoint", "backend"])
        latency = HistogramMetricFamily("serveplane_request_latency_seconds", "Request latency seen by "
                                        "callers, from the routers' mergeable histograms.",
                                        labels=["endpoint", "backend"])
        for endpoint, backends in sorted(requests.items()):
            for backend, data in sorted(backends.items()):
                total.add_metric([endpoint, backend], data["requests"])
                errors.add_metric([endpoint, backend, "application"], data["app_errors"])
                errors.add_metric([endpoint, backend, "replica"], data["replica_failures"])
                for kind in ("timed_out", "expired", "refused"):
                    errors.add_metric([endpoint, backend, kind], data.get(kind, 0))
                cancelled.add_metric([endpoint, backend], data.get("cancelled", 0))
                cumulative, buckets = 0, []
                for bound, n in zip(BOUNDS, data["latency"]):
                    cumulative += n
                    buckets.append((repr(bound), cumulative))
                buckets.append(("+Inf", cumulative + data["latency"][-1]))
                latency.add_metric([endpoint, backend], buckets, data.get("latency_sum_s", 0.0))
        yield from (total, errors, cancelled, latency)

    def _rollouts(self, rollouts: dict[str, dict[str, Any]], rollbacks: list[dict[str, Any]]) -> Iterator[Metric]:
        step = GaugeMetricFamily("serveplane_rollout_step", "Current step of the endpoint's rollout "
                                 "(-1: shadow phase).", labels=["endpoint", "backend", "state"])
        weight = GaugeMetricFamily("serveplane_rollout_weight", "Share of live traffic the canary gets.",
                                   labels=["endpoint", "backend", "state"])
        reading = GaugeMetricFamily("serveplane_rollout_reading", "Guard readings of the current step.",
                                    labels=["endpoint", "backend", "reading"])
        for endpoint, r in sorted(rollouts.items()):
            step.add_metric([endpoint, r["backend"], r["state"]], r["step"])
            weight.add_metric([endpoint, r["backend"], r["state"]], r["weight"])
            for key in _READINGS:
                value = (r.get("readings") or {}).get(key)
                if value is not None:
                    reading.add_metric([endpoint, r["backend"], key], float(value))
        count = CounterMetricFamily("serveplane_rollout_rollbacks", "Rollouts rolled back, by endpoint and "
                                    "the guard that breached.", labels=["endpoint", "reason"])
        for entry in rollbacks:
            count.add_metric([entry["endpoint"], entry["reason"]], entry["count"])
        yield from (step, weight, reading, count)


def render_prometheus(summary: dict[str, Any], endpoint_of: dict[str, list[str]] | None = None) -> str:
    """``endpoint_of`` maps a backend to the endpoints that route to it (for replica labels)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SummaryCollector(summary, endpoint_of or {}))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
