"""Turn raw per-replica and per-router figures into the service-level summary.

Input (built by the controller's ``get_metrics``):
- ``replicas``: ``{actor_name: {"backend", "endpoint"?, "total_requests", "successful_requests",
  "failed_requests", "request_rate", "avg_latency_s", "active_requests", "assigned_sessions",
  "max_concurrent_queries", "healthy"}}``
- ``routers``: per backend ``{"queued", "in_flight", "rate"}`` summed over live routers;
- ``shadows``: per backend ``{"count", "errors", "avg_latency_s", "agreement"}``;
- ``sessions``: number of live sessions; ``scaling_events``: list of dicts.
"""

from __future__ import annotations

from typing import Any


def summarize(replicas: dict[str, dict[str, Any]], queued_by_backend: dict[str, float],
              shadows: dict[str, dict[str, Any]], sessions: int,
              scaling_events: list[dict[str, Any]]) -> dict[str, Any]:
    per_replica: dict[str, dict[str, Any]] = {}
    running_by_backend: dict[str, int] = {}
    for name, r in replicas.items():
        running_by_backend[r["backend"]] = running_by_backend.get(r["backend"], 0) + 1
    for name, r in replicas.items():
        mcq = max(1, int(r.get("max_concurrent_queries", 1)))
        share = queued_by_backend.get(r["backend"], 0.0) / max(1, running_by_backend[r["backend"]])
        per_replica[name] = {
            "backend": r["backend"],
            "total_requests": r.get("total_requests", 0),
            "successful_requests": r.get("successful_requests", 0),
            "failed_requests": r.get("failed_requests", 0),
            "request_rate": r.get("request_rate", 0.0),
            "avg_latency_s": r.get("avg_latency_s", 0.0),
            "active_requests": r.get("active_requests", 0),
            "queue_depth": share,
            "assigned_sessions": r.get("assigned_sessions", 0),
            "capacity_utilization": r.get("active_requests", 0) / mcq,
            "healthy": bool(r.get("healthy", True)),
        }
    n = len(per_replica)
    healthy = sum(1 for r in per_replica.values() if r["healthy"])
    service = {
        "sessions": sessions,
        "healthy_replicas": healthy,
        "total_replicas": n,
        "total_request_rate": sum(r["request_rate"] for r in per_replica.values()),
        "avg_queue_depth": (sum(queued_by_backend.values()) / n) if n else sum(queued_by_backend.values()),
        "avg_capacity_utilization": (sum(r["capacity_utilization"] for r in per_replica.values()) / n) if n else 0.0,
        "sessions_per_replica": (sessions / n) if n else 0.0,
        "scaling_events": len(scaling_events),
    }
    return {"service": service, "replicas": per_replica, "shadows": shadows,
            "scaling_events": scaling_events}
