"""The autoscaling policy with a fake clock (plain floats) and no Ray."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from serveplane.autoscaling import AutoscalingPolicy, ScalingMetrics
from serveplane.config import AutoscalingConfig


def m(running=2, queued=0.0, in_flight=0.0, rate=0.0, healthy=None, mcq=10):
    return ScalingMetrics(running_replicas=running, healthy_replicas=running if healthy is None else healthy,
                          queued_requests=queued, in_flight_requests=in_flight, request_rate=rate,
                          max_concurrent_queries=mcq)


def policy(**kw):
    return AutoscalingPolicy(AutoscalingConfig(**kw))


def test_scale_up_on_queue_depth_then_cooldown_holds():
    p = policy(min_replicas=1, max_replicas=5, scale_up_cooldown=30, min_time_between_scale_events=0)
    d = p.decide(m(running=2, queued=12), current=2, now=100.0)
    assert d.desired_replicas == 3 and "queue depth per replica 6.0 >= 5" in d.reason
    assert p.decide(m(running=3, queued=18), 3, now=110.0).reason == "steady"
    assert p.decide(m(running=3, queued=18), 3, now=131.0).desired_replicas == 4


def test_scale_up_on_capacity_and_rate():
    p = policy(max_replicas=5, min_time_between_scale_events=0, scale_up_cooldown=0)
    assert "capacity utilization 0.90" in p.decide(m(in_flight=18), 2, 0.0).reason
    assert "request rate per replica 12.0/s" in p.decide(m(rate=24), 3, 1.0).reason


def test_emergency_ignores_cooldowns():
    p = policy(max_replicas=10, scale_up_cooldown=1000, min_time_between_scale_events=1000)
    p.last_scale_up = 0.0
    d = p.decide(m(running=2, queued=50), 2, now=1.0)
    assert d.desired_replicas == 4 and d.reason.startswith("emergency")


def test_never_past_max_or_below_min():
    p = policy(min_replicas=2, max_replicas=3, scale_up_cooldown=0, scale_down_cooldown=0,
               min_time_between_scale_events=0)
    assert p.decide(m(running=3, queued=100), 3, 0.0).desired_replicas == 3
    assert p.decide(m(running=2), 2, 10.0).desired_replicas == 2


def test_scale_down_needs_low_load_and_cooldown():
    p = policy(min_replicas=1, max_replicas=5, scale_down_cooldown=120, min_time_between_scale_events=60)
    assert p.decide(m(running=3, in_flight=2, rate=1), 3, now=0.0).reason == "steady"  # new backend
    assert p.decide(m(running=3, in_flight=2, rate=1), 3, now=30.0).reason == "steady"  # too soon
    d = p.decide(m(running=3, in_flight=2, rate=1), 3, now=130.0)
    assert d.desired_replicas == 2 and d.reason.startswith("scale down")
    assert p.decide(m(running=2, in_flight=1, rate=1), 2, now=200.0).reason == "steady"  # cooldown
    assert p.decide(m(running=2, in_flight=1, rate=1), 2, now=251.0).desired_replicas == 1


def test_no_scale_down_while_replicas_are_unhealthy():
    p = policy(min_replicas=1, scale_down_cooldown=0, min_time_between_scale_events=0,
               min_healthy_replicas_ratio=0.5)
    assert p.decide(m(running=4, healthy=1, rate=1), 4, 0.0).reason == "steady"


def test_scale_to_zero_when_idle_and_back_from_zero():
    p = policy(min_replicas=0, max_replicas=3, scale_down_idle_time_threshold=300,
               scale_down_cooldown=10_000, min_time_between_scale_events=10_000)
    assert p.decide(m(running=2), 2, now=0.0).reason == "steady"
    d = p.decide(m(running=2), 2, now=301.0)
    assert d.desired_replicas == 0 and d.reason.startswith("idle for 301s")
    d = p.decide(m(running=0, queued=1), 0, now=302.0)
    assert d.desired_replicas == 1 and d.reason.startswith("scale from zero")


@given(st.integers(0, 8), st.floats(0, 500), st.floats(0, 500), st.floats(0, 500),
       st.integers(0, 8), st.floats(0, 10_000))
def test_decision_always_within_bounds(running, queued, in_flight, rate, current, now):
    p = policy(min_replicas=1, max_replicas=6)
    d = p.decide(m(running=running, queued=queued, in_flight=in_flight, rate=rate), current, now)
    assert (1 <= d.desired_replicas <= 6) or (d.desired_replicas == current and d.reason == "steady")
