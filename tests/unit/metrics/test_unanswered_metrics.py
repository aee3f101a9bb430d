"""Requests that never answered (timed out, expired, refused, cancelled) reach get_metrics,
Prometheus and the dashboard's series; a router too old to report them counts 0."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serveplane.dashboard.feed import TrafficSeries
from serveplane.metrics import merge_router_reports, render_prometheus
from serveplane.rollout.histogram import N_BUCKETS
from tests.unit.metrics.test_metrics import sample


def outcome(requests: int, **extra: int) -> dict:
    return {"requests": requests, "app_errors": 0, "replica_failures": 0, "latency": [0] * N_BUCKETS,
            "latency_sum_s": 0.0, **extra}


def test_merge_adds_the_unanswered_counters_and_reads_old_routers_as_zero():
    new = {"endpoint": "ep", "backends": {"v2": outcome(5, timed_out=3, cancelled=2, expired=1, refused=4)}}
    old = {"endpoint": "ep", "backends": {"v2": {k: v for k, v in outcome(7).items() if k != "latency_sum_s"}}}
    merged = merge_router_reports([new, old])["requests"]["ep"]["v2"]
    assert (merged["requests"], merged["timed_out"], merged["cancelled"], merged["expired"],
            merged["refused"]) == (12, 3, 2, 1, 4)


def test_prometheus_names_each_kind_and_cancels_apart():
    summary = sample()
    summary["requests"] = {"ep": {"v2": outcome(5, timed_out=3, cancelled=2, expired=1, refused=4)}}
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(summary))}
    errors = {s.labels["kind"]: s.value for s in families["serveplane_request_errors"].samples}
    assert errors == {"application": 0, "replica": 0, "timed_out": 3, "expired": 1, "refused": 4}
    assert families["serveplane_requests_cancelled"].samples[0].value == 2


def test_the_dashboard_series_counts_timeouts_as_errors_and_not_cancels():
    # (at t=0: the series once took a first look at time 0 for no look at all)
    series = TrafficSeries(period_s=2.0)
    series.observe(0.0, [("r", {"backends": {"v2": outcome(0)}})], ["v2"])
    series.observe(2.0, [("r", {"backends": {"v2": outcome(10, timed_out=10, cancelled=30)}})], ["v2"])
    point = series.as_dict()["v2"]
    assert point["rate"] == [10.0] and point["error_rate"] == [0.5]
