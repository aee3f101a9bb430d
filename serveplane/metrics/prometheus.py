"""Prometheus text exposition (format 0.0.4) of the metrics summary."""

from __future__ import annotations

from typing import Any

_REPLICA_METRICS = [
    ("total_requests", "counter", "Requests handled by the replica."),
    ("successful_requests", "counter", "Requests that returned without error."),
    ("failed_requests", "counter", "Requests whose user code raised."),
    ("request_rate", "gauge", "Requests per second over the sliding window."),
    ("avg_latency_s", "gauge", "Mean request latency over the sliding window, seconds."),
    ("active_requests", "gauge", "Requests running on the replica now."),
    ("queue_depth", "gauge", "Requests queued in routers for this replica's backend, per replica."),
    ("assigned_sessions", "gauge", "Sessions that have sent requests to the replica."),
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
_SHADOW_METRICS = [
    ("count", "counter", "Shadow requests sent."),
    ("errors", "counter", "Shadow requests that failed."),
    ("avg_latency_s", "gauge", "Mean shadow latency, seconds."),
    ("agreement", "gauge", "Share of shadow answers equal to the primary's."),
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str | None) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items() if v is not None)
    return "{" + inner + "}" if inner else ""


def _num(value: Any) -> str:
    return repr(float(value)) if not isinstance(value, bool) else ("1.0" if value else "0.0")


def render_prometheus(summary: dict[str, Any], endpoint_of: dict[str, list[str]] | None = None) -> str:
    """``endpoint_of`` maps a backend to the endpoints that route to it (for labels)."""
    endpoint_of = endpoint_of or {}
    lines: list[str] = []
    for key, kind, help_text in _SERVICE_METRICS:
        name = f"serveplane_{key}"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                  f"{name} {_num(summary['service'].get(key, 0))}"]
    for key, kind, help_text in _REPLICA_METRICS:
        name = f"serveplane_replica_{key}"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for replica, data in sorted(summary["replicas"].items()):
            endpoints = endpoint_of.get(data["backend"]) or [""]
            for ep in endpoints:
                lines.append(f"{name}{_labels(endpoint=ep or None, backend=data['backend'], replica=replica)} "
                             f"{_num(data.get(key, 0))}")
    for key, kind, help_text in _SHADOW_METRICS:
        name = f"serveplane_shadow_{key}"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for backend, data in sorted(summary.get("shadows", {}).items()):
            lines.append(f"{name}{_labels(backend=backend)} {_num(data.get(key, 0) or 0)}")
    return "\n".join(lines) + "\n"
