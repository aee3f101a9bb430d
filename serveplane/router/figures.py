"""What a router tells about itself: the autoscaler's load report and ``statistics()``.

Plain reads of the router's parts, called under the router's lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serveplane.router.router import EndpointRouter

UNKNOWN_BACKEND = ""  # the queue key of requests that wait for the endpoint's config


def load_report(router: EndpointRouter) -> dict[str, dict[str, float]]:
    """Per backend: queued, in flight and request rate, for the controller's autoscaler."""
    view, queue = router.view, router.queue
    rates = router.stats.rates(router.clock.monotonic())
    report = {}
    for backend, replicas in view.replicas.items():
        report[backend] = {
            "queued": float(queue.count(backend)),
            "in_flight": float(view.slots.sum_of(r.actor_name for r in replicas)),
            "rate": rates.get(backend, 0.0),
        }
    waiting = queue.count(UNKNOWN_BACKEND)
    if waiting and view.info is not None:
        for backend in view.info.traffic:
            entry = report.setdefault(backend, {"queued": 0.0, "in_flight": 0.0, "rate": 0.0})
            entry["queued"] += waiting
    return report


def statistics(router: EndpointRouter) -> dict[str, Any]:
    view, stats, info = router.view, router.stats, router.view.info
    return {
        "endpoint": router.endpoint,
        "started_at": router.started_at,
        "traffic": dict(info.traffic) if info else {},
        "shadow_traffic": dict(info.shadows) if info else {},
        "policy": view.policy_key[0],
        "replicas": {b: [r.actor_name for r in view.live(b)] for b in view.replicas},
        "dead_replicas": sorted(view.dead),
        "backed_off_replicas": sorted(view.backoff.blocked()),
        "in_flight": view.slots.total(),
        "in_flight_by_replica": view.slots.by_replica(),
        "full_replicas": sorted(view.slots.full.blocked()),
        "queued": router.queue.total(),
        "requests": sum(stats.requests.values()),
        "requests_by_backend": dict(stats.requests),
        "retries": stats.retries,
        "refused_by_replicas": stats.refused,
        "cancelled": stats.cancelled,
        "session_moves": view.session_moves,
        "sessions": len(view.sessions),
        "back_pressure_rejections": stats.back_pressure_rejections,
        "shadows": {b: s.as_dict() for b, s in stats.shadows.items()},
        "backends": stats.outcomes.as_dict(),
        **router.batcher.statistics(),
    }


def describe(s: dict[str, Any]) -> str:
    """``<Router ep [backends: a=0.9 b=0.1 | replicas: 3 running | in flight: 2 | queued: 0]>``."""
    backends = " ".join(f"{b}={w:g}" for b, w in sorted(s["traffic"].items())) or "(no config)"
    running = sum(len(v) for v in s["replicas"].values())
    backed_off = f", {len(s['backed_off_replicas'])} backed off" if s["backed_off_replicas"] else ""
    return (f"<Router {s['endpoint']} [backends: {backends} | replicas: {running} running{backed_off} | "
            f"in flight: {s['in_flight']} | queued: {s['queued']}]>")
