"""Glue between handle metrics and the pure autoscaling policy.

Routers push, a few times a second at most, what they see per backend: requests queued
in the router, requests in flight on replicas, and their request rate. Reports older
than ``STALE_AFTER_S`` are ignored (a router that died stops counting).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any

from serveplane.autoscaling import AutoscalingPolicy, ScalingMetrics
from serveplane.config import AutoscalingConfig

STALE_AFTER_S = 5.0
MAX_EVENTS = 500


@dataclass(frozen=True)
class ScalingEvent:
    timestamp: float
    backend: str
    from_replicas: int
    to_replicas: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "backend": self.backend, "from": self.from_replicas,
                "to": self.to_replicas, "reason": self.reason}


class Autoscaler:
    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, dict[str, float]]]] = {}
        self._policies: dict[str, tuple[AutoscalingConfig, AutoscalingPolicy]] = {}
        self.events: collections.deque[ScalingEvent] = collections.deque(maxlen=MAX_EVENTS)

    def record(self, router_id: str, per_backend: dict[str, dict[str, float]], now: float) -> None:
        self._reports[router_id] = (now, per_backend)

    def aggregate(self, backend: str, now: float) -> dict[str, float]:
        total = {"queued": 0.0, "in_flight": 0.0, "rate": 0.0}
        for router_id, (at, per_backend) in list(self._reports.items()):
            if now - at > STALE_AFTER_S:
                del self._reports[router_id]
                continue
            data = per_backend.get(backend)
            if data:
                for key in total:
                    total[key] += float(data.get(key, 0.0))
        return total

    def decide(self, backend: str, config: AutoscalingConfig, current_target: int, running: int,
               healthy: int, max_concurrent_queries: int, now: float) -> int | None:
        """The new target, or None to keep the current one."""
        entry = self._policies.get(backend)
        if entry is None or entry[0] != config:
            entry = (config, AutoscalingPolicy(config))
            self._policies[backend] = entry
        load = self.aggregate(backend, now)
        metrics = ScalingMetrics(running_replicas=running, healthy_replicas=healthy,
                                 queued_requests=load["queued"], in_flight_requests=load["in_flight"],
                                 request_rate=load["rate"], max_concurrent_queries=max_concurrent_queries)
        decision = entry[1].decide(metrics, current_target, now)
        if decision.desired_replicas == current_target:
            return None
        self.events.append(ScalingEvent(time.time(), backend, current_target,
                                        decision.desired_replicas, decision.reason))
        return decision.desired_replicas

    def forget(self, backend: str) -> None:
        self._policies.pop(backend, None)
