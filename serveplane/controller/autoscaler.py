"""Glue between handle metrics and the pure autoscaling policy.

Routers push, a few times a second at most, what they see per backend: requests queued
in the router, requests in flight on replicas, and their request rate. They are held by
``RouterReports`` (``router_reports.py``), whose one freshness rule decides which count (a
router that died stops counting). Scaling events are stamped with the injected clock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from serveplane.autoscaling import AutoscalingPolicy, ScalingMetrics
from serveplane.clock import SYSTEM_CLOCK, Clock
from serveplane.config import AutoscalingConfig
from serveplane.controller.router_reports import RouterReports

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
    def __init__(self, reports: RouterReports, clock: Clock = SYSTEM_CLOCK) -> None:
        self._reports = reports
        self._clock = clock
        self._policies: dict[str, tuple[AutoscalingConfig, AutoscalingPolicy]] = {}
        self.events: collections.deque[ScalingEvent] = collections.deque(maxlen=MAX_EVENTS)

    def aggregate(self, backend: str) -> dict[str, float]:
        """Queued, in flight and rate of ``backend`` over the fresh router reports."""
        return self._reports.load(backend)

    def decide(self, backend: str, config: AutoscalingConfig, current_target: int, running: int,
               healthy: int, max_concurrent_queries: int, now: float) -> int | None:
        """The new target, or None to keep the current one."""
        entry = self._policies.get(backend)
        if entry is None or entry[0] != config:
            entry = (config, AutoscalingPolicy(config))
            self._policies[backend] = entry
        load = self.aggregate(backend)
        metrics = ScalingMetrics(running_replicas=running, healthy_replicas=healthy,
                                 queued_requests=load["queued"], in_flight_requests=load["in_flight"],
                                 request_rate=load["rate"], max_concurrent_queries=max_concurrent_queries)
        decision = entry[1].decide(metrics, current_target, now)
        if decision.desired_replicas == current_target:
            return None
        self.events.append(ScalingEvent(self._clock.time(), backend, current_target,
                                        decision.desired_replicas, decision.reason))
        return decision.desired_replicas

    def forget(self, backend: str) -> None:
        self._policies.pop(backend, None)
