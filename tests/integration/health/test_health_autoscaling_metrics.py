"""Health checks, autoscaling on real load, scale-to-zero, and the metrics API."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray

from serveplane import AutoscalingConfig
from tests.integration.health.backends import Busy, Sick, quick

pytestmark = [pytest.mark.ray]

HEALTH = {"health_check_period_s": 0.2, "health_check_timeout_s": 1.0, "health_check_failure_threshold": 2}


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition not met"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(interval)


def replica_names(client, backend):
    return {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
            if e["namespace"] == client._namespace and e["name"].startswith(f"serveplane:{backend}#")}


@pytest.mark.parametrize("mode", ["raise", "hang"], ids=["check-raises", "check-hangs"])
def test_unhealthy_replica_is_removed_and_replaced(serve_instance, mode):
    client = serve_instance
    client.create_backend("s", Sick, config=dict(HEALTH, num_replicas=2))
    client.create_endpoint("ep", backend="s")
    h = client.get_handle("ep")
    wait_until(lambda: len(h.router.statistics()["replicas"].get("s", [])) == 2)
    # application errors never make a replica unhealthy
    for _ in range(10):
        with pytest.raises(ValueError, match="application error"):
            h.options(method_name="fail").remote().result(timeout=30)
    time.sleep(1.0)
    assert len(replica_names(client, "s")) == 2
    original = replica_names(client, "s")
    sick = h.options(method_name="set_mode").remote(mode).result(timeout=30)
    wait_until(lambda: sick not in h.router.statistics()["replicas"].get("s", []), timeout=30,
               message=f"{sick} still routed")
    wait_until(lambda: len(replica_names(client, "s")) == 2 and sick not in replica_names(client, "s"),
               timeout=60, message="sick replica not replaced")
    assert len(replica_names(client, "s") - original) == 1
    assert {h.options(method_name="whoami").remote().result(timeout=30) for _ in range(10)} <= replica_names(client, "s")


@pytest.mark.timeout(300)
def test_load_ramp_scales_up_then_down_with_reasons(serve_instance):
    client = serve_instance
    auto = AutoscalingConfig(min_replicas=1, max_replicas=3, scale_up_queue_depth_threshold=2.0,
                             scale_up_cooldown=0.5, min_time_between_scale_events=0.5,
                             scale_down_cooldown=1.0, scale_down_idle_time_threshold=2.0)
    client.create_backend("busy", Busy, config={"autoscaling_config": auto, "max_concurrent_queries": 2},
                          ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("ep", backend="busy")
    h = client.get_handle("ep")
    stop = threading.Event()

    def load():
        async def main():
            sem = asyncio.Semaphore(24)

            async def one():
                async with sem:
                    await h.remote(0.3)

            while not stop.is_set():
                await asyncio.gather(*(one() for _ in range(24)))

        asyncio.run(main())

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        wait_until(lambda: client.get_status()["backends"]["busy"]["target_replicas"] == 3, timeout=60,
                   message="did not scale up to 3")
    finally:
        stop.set()
        thread.join(timeout=30)
    wait_until(lambda: client.get_status()["backends"]["busy"]["target_replicas"] == 1, timeout=90,
               message="did not scale back down")
    events = client._call("get_scaling_events")
    ups = [e for e in events if e["to"] > e["from"]]
    downs = [e for e in events if e["to"] < e["from"]]
    assert ups and downs
    assert all("queue depth" in e["reason"] or "capacity" in e["reason"] or "emergency" in e["reason"]
               or "rate" in e["reason"] for e in ups)
    assert all(e["reason"].startswith(("idle", "scale down")) for e in downs)
    assert client.get_metrics()["service"]["scaling_events"] == len(events)


def test_scale_to_zero_and_back(serve_instance):
    client = serve_instance
    auto = AutoscalingConfig(min_replicas=0, max_replicas=1, initial_replicas=0)
    client.create_backend("z", quick, config={"autoscaling_config": auto}, ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("ep", backend="z")
    assert replica_names(client, "z") == set()
    h = client.get_handle("ep")
    t0 = time.monotonic()
    assert h.options(timeout_s=60).remote().result(timeout=90) == "ok"  # waited while a replica started
    print(f"\ncold start from zero: {time.monotonic() - t0:.2f}s")
    assert len(replica_names(client, "z")) == 1
    assert any(e["reason"].startswith("scale from zero") for e in client._call("get_scaling_events"))


def test_metrics_api(serve_instance):
    client = serve_instance
    client.create_backend("q", quick, config={"num_replicas": 2})
    client.create_backend("q2", quick)
    client.create_endpoint("ep", backend="q")
    client.shadow_traffic("ep", "q2", 1.0)
    h = client.get_handle("ep")
    wait_until(lambda: h.router.endpoint_info is not None and h.router.endpoint_info.shadows)
    wait_until(lambda: h.router.statistics()["replicas"].get("q2"))
    sid = client.start_session()
    for _ in range(20):
        assert h.options(session_id=sid).remote().result(timeout=30) == "ok"
    for _ in range(10):
        assert h.remote().result(timeout=30) == "ok"
    wait_until(lambda: client.get_metrics()["shadows"].get("q2", {}).get("count", 0) >= 30, timeout=10)
    m = client.get_metrics()
    svc = m["service"]
    assert svc["total_replicas"] == 3 and svc["healthy_replicas"] == 3
    assert svc["sessions"] >= 1 and svc["total_request_rate"] > 0
    primary = {k: v for k, v in m["replicas"].items() if v["backend"] == "q"}
    assert sum(v["total_requests"] for v in primary.values()) == 30
    assert sum(v["assigned_sessions"] for v in primary.values()) == 1
    assert m["shadows"]["q2"]["agreement"] == 1.0  # same function: every answer agrees
    assert client.get_metrics_summary() .keys() >= {"sessions", "healthy_replicas", "avg_queue_depth"}
    text = client.get_metrics_prometheus()
    assert 'serveplane_shadow_agreement{backend="q2"} 1.0' in text
