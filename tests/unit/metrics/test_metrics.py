from __future__ import annotations

import re

from serveplane.metrics import render_prometheus, summarize


def sample():
    replicas = {
        "serveplane:a#1": {"backend": "a", "total_requests": 10, "successful_requests": 9,
                           "failed_requests": 1, "request_rate": 2.0, "avg_latency_s": 0.01,
                           "active_requests": 2, "assigned_sessions": 3, "max_concurrent_queries": 4},
        "serveplane:a#2": {"backend": "a", "total_requests": 6, "successful_requests": 6,
                           "failed_requests": 0, "request_rate": 1.0, "avg_latency_s": 0.02,
                           "active_requests": 0, "assigned_sessions": 1, "max_concurrent_queries": 4,
                           "healthy": False},
    }
    shadows = {"b": {"count": 5, "errors": 1, "avg_latency_s": 0.03, "agreement": 0.75}}
    return summarize(replicas, {"a": 4.0}, shadows, sessions=4,
                     scaling_events=[{"backend": "a", "from": 1, "to": 2, "reason": "scale up"}])


def test_summary_figures():
    s = sample()
    svc = s["service"]
    assert (svc["total_replicas"], svc["healthy_replicas"], svc["sessions"]) == (2, 1, 4)
    assert svc["total_request_rate"] == 3.0 and svc["avg_queue_depth"] == 2.0
    assert svc["avg_capacity_utilization"] == 0.25 and svc["sessions_per_replica"] == 2.0
    assert s["replicas"]["serveplane:a#1"]["queue_depth"] == 2.0
    assert s["replicas"]["serveplane:a#1"]["capacity_utilization"] == 0.5


def test_prometheus_exposition_is_well_formed():
    text = render_prometheus(sample(), {"a": ["ep"]})
    assert 'serveplane_replica_requests_total{backend="a",endpoint="ep",replica="serveplane:a#1"} 10.0' in text
    assert 'serveplane_shadow_agreement{backend="b"} 0.75' in text
    sample_line = re.compile(r'^[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample_line.match(line), line


def test_request_histograms_and_rollouts_parse_as_prometheus():
    from prometheus_client.parser import text_string_to_metric_families

    from serveplane.rollout.histogram import N_BUCKETS, bucket_of

    summary = sample()
    latency = [0] * N_BUCKETS
    latency[bucket_of(0.002)] = 90
    latency[bucket_of(0.2)] = 10
    summary["requests"] = {"ep": {"a": {"requests": 100, "app_errors": 3, "replica_failures": 1,
                                        "latency": latency, "latency_sum_s": 2.18}}}
    summary["rollouts"] = {"ep": {"backend": "b", "state": "running", "step": 1, "weight": 0.25,
                                  "readings": {"error_rate": 0.01, "latency_ratio": 1.2}}}
    summary["rollbacks"] = [{"endpoint": "ep", "reason": "canary error rate 0.3", "count": 2}]
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(summary, {"a": ["ep"]}))}
    buckets = {s.labels["le"]: s.value for s in families["serveplane_request_latency_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["+Inf"] == 100 and buckets["0.0005"] == 0
    assert min(v for le, v in buckets.items() if le != "+Inf" and float(le) >= 0.2) == 100
    errors = {s.labels["kind"]: s.value for s in families["serveplane_request_errors"].samples}
    assert errors == {"application": 3, "replica": 1, "timed_out": 0, "expired": 0, "refused": 0}
    weight = families["serveplane_rollout_weight"].samples[0]
    assert (weight.labels["endpoint"], weight.labels["state"], weight.value) == ("ep", "running", 0.25)
    readings = {s.labels["reading"]: s.value for s in families["serveplane_rollout_reading"].samples}
    assert readings == {"error_rate": 0.01, "latency_ratio": 1.2}
    assert families["serveplane_rollout_rollbacks"].samples[0].value == 2
