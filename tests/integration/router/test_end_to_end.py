"""The data path on real Ray: handles, splits, shadows, sessions, fanout, failures."""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
import ray

from serveplane.exceptions import BackPressureError, ReplicaDiedError
from serveplane.router import QuorumError
from tests.integration.router.backends import Adder, Doubler, Echo, Flaky, SessionProbe, SlowEcho

pytestmark = [pytest.mark.ray]


def wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def test_sync_async_and_method_options(serve_instance):
    client = serve_instance
    client.create_backend("e", Echo, "one")
    client.create_endpoint("ep", backend="e")
    h = client.get_handle("ep")
    assert h.remote(3).result(timeout=30)["x"] == 3
    assert h.options(method_name="predict").remote(4).result(timeout=30)["predict"] == 8

    async def many():
        return await asyncio.gather(*(h.remote(i) for i in range(20)))

    assert [r["x"] for r in asyncio.run(many())] == list(range(20))
    with pytest.raises(ValueError, match="bad input 5"):
        h.options(method_name="fail").remote(5).result(timeout=30)
    assert h.remote(6).result(timeout=30)["x"] == 6  # app errors don't hurt the replica


def test_weighted_split_and_set_traffic_reaches_router_fast(serve_instance):
    client = serve_instance
    client.create_backend("a", Echo, "a")
    client.create_backend("b", Echo, "b")
    client.create_endpoint("ep", backend="a")
    h = client.get_handle("ep")
    assert h.remote(0).result(timeout=30)["tag"] == "a"
    t0 = time.monotonic()
    client.set_traffic("ep", {"a": 0.2, "b": 0.8})
    wait_until(lambda: h.router.statistics()["traffic"] == {"a": 0.2, "b": 0.8}, timeout=5)
    seen_within = time.monotonic() - t0
    counts = collections.Counter(h.remote(i).result(timeout=30)["tag"] for i in range(400))
    assert 0.12 < counts["a"] / 400 < 0.28, counts
    print(f"\nset_traffic visible in router after {seen_within * 1000:.0f} ms (call included)")


def test_shard_key_is_deterministic(serve_instance):
    client = serve_instance
    client.create_backend("a", Echo, "a")
    client.create_backend("b", Echo, "b")
    client.create_endpoint("ep", backend="a")
    client.set_traffic("ep", {"a": 0.5, "b": 0.5})
    h = client.get_handle("ep")
    wait_until(lambda: len(h.router.statistics()["traffic"]) == 2)
    for key in ("user-1", "user-2", "user-7"):
        tags = {h.options(shard_key=key).remote(i).result(timeout=30)["tag"] for i in range(10)}
        assert len(tags) == 1


def test_response_passed_to_another_handle_and_handle_in_task(serve_instance):
    client = serve_instance
    client.create_backend("d", Doubler)
    client.create_backend("add", Adder)
    client.create_endpoint("double", backend="d")
    client.create_endpoint("add", backend="add")
    double, add = client.get_handle("double"), client.get_handle("add")
    first = double.remote(5)
    assert add.remote(first, y=1).result(timeout=30) == 11  # ref resolved by Ray, not by us

    @ray.remote
    def use(handle, x):
        return handle.remote(x).result(timeout=30)

    assert ray.get(use.remote(double, 21), timeout=60) == 42
    ref = double.remote(7).object_ref()
    assert ray.get(ref, timeout=30) == 14


def test_fanout_reports_each_replica_and_quorum(serve_instance):
    client = serve_instance
    client.create_backend("f", Flaky, config={"num_replicas": 3})
    client.create_endpoint("ep", backend="f")
    h = client.get_handle("ep").options(method_name="ping")
    wait_until(lambda: sum(len(v) for v in h.router.statistics()["replicas"].values()) == 3)
    results = h.fanout("")
    assert len(results) == 3 and all(name == value for name, value in results.items())
    victim = sorted(results)[0]
    tag = victim.split("#")[1]
    results = h.fanout(tag)
    errors = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    assert list(errors) == [victim] and "refuses" in str(errors[victim])
    assert len(h.fanout(tag, quorum=2)) == 3
    with pytest.raises(QuorumError, match="2 of 3 replicas answered, quorum is 3"):
        h.fanout(tag, quorum=3)


def test_sessions_stick_and_move_when_replica_dies(serve_instance):
    client = serve_instance
    client.create_backend("s", SessionProbe, config={"num_replicas": 3})
    client.create_endpoint("ep", backend="s")
    h = client.get_handle("ep")
    wait_until(lambda: sum(len(v) for v in h.router.statistics()["replicas"].values()) == 3)
    sid = client.start_session()
    replicas = {h.options(session_id=sid).remote().result(timeout=30)["replica"] for _ in range(100)}
    assert len(replicas) == 1
    # a session started in another process picks the same replica (hash, not local state)

    @ray.remote
    def other_process(handle, sid):
        return handle.options(session_id=sid).remote().result(timeout=30)["replica"]

    assert ray.get(other_process.remote(h, sid), timeout=60) == next(iter(replicas))

    async def nested():
        async with h.session() as s:
            first = await s.remote()
            again = await h.remote()  # no explicit session: context carries it
            return first, again

    first, again = asyncio.run(nested())
    assert first["replica"] == again["replica"] and first["session"] == again["session"]

    ray.kill(ray.get_actor(next(iter(replicas)), namespace=client._namespace), no_restart=True)
    # the session's next request is answered elsewhere at once (retried off the dead replica)
    assert h.options(session_id=sid).remote().result(timeout=30)["replica"] not in replicas
    # once the replacement has joined, the session sticks to one live replica again (the set
    # changing may move it once more: rendezvous hashing over the new set)
    live = lambda: {n for names in h.router.statistics()["replicas"].values() for n in names}  # noqa: E731
    wait_until(lambda: len(live()) == 3 and not live() & replicas, timeout=60)
    moved = {h.options(session_id=sid).remote().result(timeout=30)["replica"] for _ in range(20)}
    assert len(moved) == 1 and moved != replicas
    assert h.router.statistics()["session_moves"] >= 1
    client.terminate_session(sid)


def test_shadow_never_delays_primary_and_is_counted(serve_instance):
    client = serve_instance
    client.create_backend("fast", Echo, "fast")
    client.create_backend("slow", SlowEcho, 2.0)
    client.create_endpoint("ep", backend="fast")
    client.shadow_traffic("ep", "slow", 1.0)
    h = client.get_handle("ep")
    wait_until(lambda: h.router.endpoint_info is not None and h.router.endpoint_info.shadows == {"slow": 1.0})
    wait_until(lambda: h.router.statistics()["replicas"].get("slow"))
    t0 = time.monotonic()
    assert h.remote(1).result(timeout=30)["tag"] == "fast"
    assert time.monotonic() - t0 < 0.5
    stats = h.router.statistics()["shadows"]["slow"]
    assert stats["count"] == 1
    wait_until(lambda: h.router.statistics()["shadows"]["slow"]["avg_latency_s"] >= 1.9, timeout=10)


def test_back_pressure_when_queue_is_full(serve_instance):
    client = serve_instance
    client.create_backend("slow", SlowEcho, 1.0,
                          config={"max_concurrent_queries": 1, "max_queued_requests": 2})
    client.create_endpoint("ep", backend="slow")
    h = client.get_handle("ep")
    wait_until(lambda: h.router.statistics()["replicas"].get("slow"))
    wait_until(lambda: h.router.view.configs.get("slow") is not None
               and h.router.view.configs["slow"].max_queued_requests == 2)
    running = h.remote(0)          # takes the only slot
    queued = [h.remote(i) for i in (1, 2)]  # wait in the router's queue
    with pytest.raises(BackPressureError, match="limit .*is 2"):
        h.remote(3)
    assert running.result(timeout=30) == 0
    assert [q.result(timeout=30) for q in queued] == [1, 2]


def test_in_flight_request_is_retried_when_its_replica_dies(serve_instance):
    client = serve_instance
    client.create_backend("slow", SlowEcho, 1.0, config={"num_replicas": 2})
    client.create_endpoint("ep", backend="slow")
    h = client.get_handle("ep")
    wait_until(lambda: len(h.router.statistics()["replicas"].get("slow", [])) == 2)
    response = h.remote("payload")
    time.sleep(0.2)
    ray.kill(ray.get_actor(response.replica.actor_name, namespace=client._namespace), no_restart=True)
    assert response.result(timeout=30) == "payload"
    assert h.router.statistics()["retries"] >= 1


def test_not_idempotent_fails_with_replica_died(serve_instance):
    client = serve_instance
    client.create_backend("slow", SlowEcho, 1.0, config={"num_replicas": 2, "idempotent": False})
    client.create_endpoint("ep", backend="slow")
    h = client.get_handle("ep")
    wait_until(lambda: len(h.router.statistics()["replicas"].get("slow", [])) == 2)
    wait_until(lambda: h.router.view.configs.get("slow") is not None and not h.router.view.configs["slow"].idempotent)
    response = h.remote("payload")
    time.sleep(0.2)
    victim = response.replica.actor_name
    ray.kill(ray.get_actor(victim, namespace=client._namespace), no_restart=True)
    with pytest.raises(ReplicaDiedError, match=f"replica {victim} died.*idempotent=False"):
        response.result(timeout=30)


def test_a_replica_death_seen_by_one_router_reaches_the_others(serve_instance):
    client = serve_instance
    client.create_backend("slow", SlowEcho, 1.0, config={"num_replicas": 2, "health_check_period_s": 60})
    client.create_endpoint("ep", backend="slow")
    h = client.get_handle("ep")
    wait_until(lambda: len(h.router.statistics()["replicas"].get("slow", [])) == 2)

    @ray.remote
    class OtherProcess:
        """Another process with its own router for the same endpoint."""

        def __init__(self, handle):
            self.handle = handle
            self.handle.remote("warm").result(timeout=60)

        def replicas(self):
            return self.handle.router.statistics()["replicas"].get("slow", [])

    other = OtherProcess.remote(h)
    wait_until(lambda: len(ray.get(other.replicas.remote(), timeout=30)) == 2)
    response = h.remote("x")
    time.sleep(0.2)
    victim = response.replica.actor_name
    ray.kill(ray.get_actor(victim, namespace=client._namespace), no_restart=True)
    t0 = time.monotonic()
    assert response.result(timeout=30) == "x"  # retried here; this router reports the death
    # with a 60 s health-check period, only the report explains the other router learning fast
    wait_until(lambda: victim not in ray.get(other.replicas.remote(), timeout=30), timeout=10)
    print(f"\nother router dropped the dead replica {time.monotonic() - t0:.2f}s after it was seen")
