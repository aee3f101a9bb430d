"""The controller's router-report and metrics RPCs (a part of ``ServeController``).

Routers push what they see a few times a second at most; ``RouterReports`` holds them
(one freshness rule, bounded memory); ``get_metrics`` merges the fresh ones with what
replicas say about themselves (called outside the lock).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from serveplane.backend_state import BackendStateManager
from serveplane.controller.autoscaler import Autoscaler
from serveplane.controller.router_reports import RouterReports
from serveplane.endpoint_state import EndpointState


class MetricsRPCs:
    _backends: BackendStateManager
    _endpoints: EndpointState
    _autoscaler: Autoscaler
    _router_reports: RouterReports
    rollbacks: Any
    _rollout_view: Callable[[str], dict[str, Any]]  # RolloutRPCs

    async def record_handle_metrics(self, router_id: str, per_backend: dict[str, dict[str, float]],
                                    router_stats: dict[str, Any] | None = None) -> None:
        """Routers push queued / in-flight / rate per backend (a few times a second at most)."""
        self._router_reports.record(router_id, per_backend, router_stats)

    async def get_metrics(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Service, replica and shadow figures (replica calls happen outside the lock)."""
        from serveplane.metrics import merge_router_reports, summarize

        targets = [(s.tag, info) for s in self._backends for info in s.serving_infos()]
        mcq = {s.tag: s.record.config.max_concurrent_queries for s in self._backends}

        async def one(info: Any) -> dict[str, Any]:
            try:
                data = await asyncio.wait_for(info.actor_handle.get_metrics.remote(), timeout_s)
                return dict(data, healthy=True)
            except Exception:  # noqa: BLE001 - a replica that does not answer counts as unhealthy
                return {"healthy": False}

        results = await asyncio.gather(*(one(info) for _, info in targets))
        replicas = {info.actor_name: dict(data, backend=tag, max_concurrent_queries=mcq.get(tag, 1))
                    for (tag, info), data in zip(targets, results)}
        merged = merge_router_reports(stats for _, stats in self._router_reports.statistics_of())
        queued = {tag: self._autoscaler.aggregate(tag)["queued"] for tag in mcq}
        summary = summarize(replicas, queued, merged["shadows"], merged["sessions"],
                            [e.as_dict() for e in self._autoscaler.events])
        summary["endpoints"] = {n: sorted(set(r.traffic) | set(r.shadows))
                                for n, r in self._endpoints.records().items()}
        summary["requests"] = merged["requests"]
        summary["rollouts"] = {n: self._rollout_view(n) for n, r in self._endpoints.records().items()
                               if r.rollout is not None}
        summary["rollbacks"] = [{"endpoint": ep, "reason": reason, "count": n}
                                for (ep, reason), n in sorted(self.rollbacks.items())]
        return summary

    async def report_replica_failure(self, backend: str, actor_name: str) -> bool:
        """A router saw this replica die: health-check it now, so every router learns at once
        (the report is verified, never trusted: a live replica stays)."""
        state = self._backends.get_any(backend)
        if state is None:
            return False
        for replica in state.replicas:
            if replica.wrapper.actor_name == actor_name:
                replica.wrapper.probe_now()
                self._backends.mark_active(backend)
                return True
        return False

    async def get_scaling_events(self) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self._autoscaler.events]

