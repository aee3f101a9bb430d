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
    assert 'serveplane_replica_total_requests{endpoint="ep",backend="a",replica="serveplane:a#1"} 10.0' in text
    assert 'serveplane_shadow_agreement{backend="b"} 0.75' in text
    sample_line = re.compile(r'^[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample_line.match(line), line
