"""The autoscaling policy: a pure function of (config, metrics, clock, its last events).

No Ray, no I/O: the controller feeds it one aggregated observation per backend per tick
and applies the decision. Every decision carries its reason, so every scaling event can
be recorded and explained.

Order of rules (first match wins):
1. scale from zero: no replicas and any demand -> 1, at once;
2. emergency: queue depth per replica >= ``max_queue_depth_emergency`` -> up by twice
   the step, ignoring cooldowns;
3. scale up: any of queue depth, capacity utilisation or request rate per replica at or
   above its threshold, past ``scale_up_cooldown`` and ``min_time_between_scale_events``;
4. idle: no requests for ``scale_down_idle_time_threshold`` -> ``min_replicas``;
5. scale down: capacity utilisation *and* queue depth at or below their thresholds, past
   ``scale_down_cooldown`` and ``min_time_between_scale_events``, and only while at least
   ``min_healthy_replicas_ratio`` of the replicas are healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from serveplane.config import AutoscalingConfig


@dataclass(frozen=True)
class ScalingMetrics:
    """One aggregated observation of a backend."""

    running_replicas: int
    healthy_replicas: int
    queued_requests: float       # waiting in routers, not yet sent to a replica
    in_flight_requests: float    # running on replicas
    request_rate: float          # requests per second over the window
    max_concurrent_queries: int

    @property
    def capacity_utilization(self) -> float:
        capacity = self.running_replicas * self.max_concurrent_queries
        return self.in_flight_requests / capacity if capacity else 0.0

    @property
    def queue_depth_per_replica(self) -> float:
        return self.queued_requests / max(1, self.running_replicas)

    @property
    def rate_per_replica(self) -> float:
        return self.request_rate / max(1, self.running_replicas)

    @property
    def idle(self) -> bool:
        return self.request_rate == 0 and self.in_flight_requests == 0 and self.queued_requests == 0


@dataclass(frozen=True)
class ScalingDecision:
    desired_replicas: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.reason != "steady"


class AutoscalingPolicy:
    def __init__(self, config: AutoscalingConfig) -> None:
        self.config = config
        self.last_scale_up = float("-inf")
        self.last_scale_down = float("-inf")
        self.idle_since: float | None = None
        # scale-down cooldowns count from the first observation too: a new backend is not
        # shrunk before it has seen any traffic
        self.first_seen: float | None = None

    @property
    def last_event(self) -> float:
        return max(self.last_scale_up, self.last_scale_down)

    def _clamp(self, n: int) -> int:
        return max(self.config.min_replicas, min(self.config.max_replicas, n))

    def decide(self, metrics: ScalingMetrics, current: int, now: float) -> ScalingDecision:
        c = self.config
        if self.first_seen is None:
            self.first_seen = now
        if metrics.idle:
            if self.idle_since is None:
                self.idle_since = now
        else:
            self.idle_since = None

        if current == 0 and not metrics.idle and c.max_replicas > 0:
            self.last_scale_up = now
            return ScalingDecision(self._clamp(1), "scale from zero: a request is waiting")

        qd = metrics.queue_depth_per_replica
        if qd >= c.max_queue_depth_emergency and current < c.max_replicas:
            self.last_scale_up = now
            target = self._clamp(current + 2 * c.scale_up_step_size)
            return ScalingDecision(
                target, f"emergency: queue depth per replica {qd:.1f} >= {c.max_queue_depth_emergency:g}")

        reasons = []
        if qd >= c.scale_up_queue_depth_threshold:
            reasons.append(f"queue depth per replica {qd:.1f} >= {c.scale_up_queue_depth_threshold:g}")
        if metrics.capacity_utilization >= c.scale_up_capacity_threshold:
            reasons.append(f"capacity utilization {metrics.capacity_utilization:.2f} >= "
                           f"{c.scale_up_capacity_threshold:g}")
        if metrics.rate_per_replica >= c.scale_up_request_rate_threshold:
            reasons.append(f"request rate per replica {metrics.rate_per_replica:.1f}/s >= "
                           f"{c.scale_up_request_rate_threshold:g}/s")
        if reasons and current < c.max_replicas:
            if now - self.last_scale_up >= c.scale_up_cooldown and \
                    now - self.last_event >= c.min_time_between_scale_events:
                self.last_scale_up = now
                return ScalingDecision(self._clamp(current + c.scale_up_step_size),
                                       "scale up: " + "; ".join(reasons))
            return ScalingDecision(current, "steady")

        if current > c.min_replicas and self.idle_since is not None and \
                now - self.idle_since >= c.scale_down_idle_time_threshold:
            self.last_scale_down = now
            return ScalingDecision(c.min_replicas,
                                   f"idle for {now - self.idle_since:.0f}s >= "
                                   f"{c.scale_down_idle_time_threshold:g}s")

        healthy_ratio = metrics.healthy_replicas / metrics.running_replicas if metrics.running_replicas else 1.0
        if (current > c.min_replicas
                and metrics.capacity_utilization <= c.scale_down_capacity_threshold
                and qd <= c.scale_down_queue_depth_threshold
                and healthy_ratio >= c.min_healthy_replicas_ratio
                and now - max(self.last_scale_down, self.first_seen) >= c.scale_down_cooldown
                and now - max(self.last_event, self.first_seen) >= c.min_time_between_scale_events):
            self.last_scale_down = now
            return ScalingDecision(
                self._clamp(current - c.scale_down_step_size),
                f"scale down: capacity utilization {metrics.capacity_utilization:.2f} <= "
                f"{c.scale_down_capacity_threshold:g} and queue depth per replica {qd:.1f} <= "
                f"{c.scale_down_queue_depth_threshold:g}")
        return ScalingDecision(current, "steady")
