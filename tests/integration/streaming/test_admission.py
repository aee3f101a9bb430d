"""Replica-side admission: max_concurrent_queries holds across routers in different
processes, and a draining replica refuses new work (nothing lost with idempotent=False)."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import ray

from serveplane import BackendConfig
from tests.integration.streaming.backends import Streamer

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
def call_slow_from_another_process(handle, n: int, seconds: float) -> list:
    responses = [handle.options(method_name="slow").remote(seconds) for _ in range(n)]
    return [r.result(timeout=120) for r in responses]


def test_max_concurrent_queries_holds_across_two_processes(serve_instance):
    client = serve_instance
    client.create_backend("adm", Streamer, config=BackendConfig(max_concurrent_queries=1))
    client.create_endpoint("adm", backend="adm")
    h = client.get_handle("adm")
    assert h.options(method_name="counters").remote().result(timeout=60)["max_running"] == 0
    other = call_slow_from_another_process.remote(h, 3, 0.3)
    mine = [h.options(method_name="slow").remote(0.3) for _ in range(3)]
    assert [r.result(timeout=120) for r in mine] == ["finished"] * 3
    assert ray.get(other, timeout=120) == ["finished"] * 3
    counters = h.options(method_name="counters").remote().result(timeout=60)
    assert counters["started"] == 6
    assert counters["max_running"] == 1, "two routers together ran more than max_concurrent_queries"


def test_scale_down_under_load_loses_nothing_with_idempotent_false(serve_instance):
    client = serve_instance
    client.create_backend("drain", Streamer, config=BackendConfig(
        num_replicas=2, max_concurrent_queries=2, idempotent=False, graceful_shutdown_timeout_s=5))
    client.create_endpoint("drain", backend="drain")
    h = client.get_handle("drain").options(method_name="slow")
    deadline = time.monotonic() + 60

    def load(worker: int) -> list:
        out = []
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            out.append(h.remote(0.05).result(timeout=60))
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, i) for i in range(4)]
        while len(h.router.statistics()["in_flight_by_replica"]) < 2:  # load on both replicas
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.update_backend_config("drain", {"num_replicas": 1})
        results = [f.result(timeout=120) for f in futures]
    assert time.monotonic() < deadline
    flat = [r for rs in results for r in rs]
    assert flat and all(r == "finished" for r in flat)
    stats = h.router.statistics()
    assert len(stats["replicas"]["drain"]) == 1
