"""Merge what routers report (cumulative counters, see router/stats.py) into figures per
endpoint and backend: sessions, shadow outcomes, answers, errors, requests that never
answered (timed out, cancelled, expired in a queue, refused by back-pressure; 0 from a
router too old to report them) and latency histograms.

Pure: the controller hands in the reports it holds; nothing here talks to Ray.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from serveplane.rollout.histogram import N_BUCKETS

# per backend, cumulative: answers (and replica failures), and what never answered
COUNTERS = ("requests", "app_errors", "replica_failures", "timed_out", "cancelled", "expired", "refused")


def merge_router_reports(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"sessions", "shadows": {backend: ...}, "requests": {endpoint: {backend: ...}}}``."""
    sessions = 0
    shadows: dict[str, dict[str, Any]] = {}
    requests: dict[str, dict[str, dict[str, Any]]] = {}
    for stats in reports:
        sessions += int(stats.get("sessions", 0))
        for backend, sh in stats.get("shadows", {}).items():
            acc = shadows.setdefault(backend, {"count": 0, "errors": 0, "dropped": 0, "compared": 0,
                                               "_agreed": 0.0, "_lat": 0.0, "_done": 0})
            acc["count"] += sh["count"]
            acc["errors"] += sh["errors"]
            acc["dropped"] += sh.get("dropped", 0)
            acc["compared"] += sh.get("compared", 0)
            acc["_agreed"] += (sh["agreement"] or 0.0) * sh.get("compared", 0)
            done = max(0, sh["count"] - sh.get("dropped", 0))
            acc["_lat"] += sh["avg_latency_s"] * done
            acc["_done"] += done
        per_endpoint = requests.setdefault(stats.get("endpoint", ""), {})
        for backend, outcome in stats.get("backends", {}).items():
            acc = per_endpoint.setdefault(backend, {**{key: 0 for key in COUNTERS},
                                                    "latency": [0] * N_BUCKETS, "latency_sum_s": 0.0})
            for key in COUNTERS:
                acc[key] += int(outcome.get(key, 0) or 0)  # an older router lacks the newer ones
            acc["latency_sum_s"] += outcome.get("latency_sum_s", 0.0)
            for i, n in enumerate(outcome["latency"]):
                acc["latency"][i] += n
    for acc in shadows.values():
        acc["agreement"] = acc.pop("_agreed") / acc["compared"] if acc["compared"] else None
        done = acc.pop("_done")
        acc["avg_latency_s"] = acc.pop("_lat") / done if done else 0.0
    return {"sessions": sessions, "shadows": shadows,
            "requests": {ep: b for ep, b in requests.items() if b}}
