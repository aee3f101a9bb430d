"""The data path on real Ray: replica actors started directly, config pushed by the test."""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
import ray

from serveplane.exceptions import BackPressureError, ReplicaDiedError
from serveplane.records import keys
from serveplane.router import QuorumError, get_handle
from tests.integration.router.backends import Echo, SessionProbe, SlowEcho

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def test_sync_async_method_options_and_application_errors(pool):
    pool.backend("echo", Echo, "one", replicas=2)
    h = pool.endpoint("ep", "echo")
    assert h.remote(3).result(timeout=30)["x"] == 3
    assert h.options(method_name="predict").remote(4).result(timeout=30)["predict"] == 8

    async def many():
        return await asyncio.gather(*(h.remote(i) for i in range(20)))

    answers = asyncio.run(many())
    assert [a["x"] for a in answers] == list(range(20))
    assert len({a["replica"] for a in answers}) == 2
    with pytest.raises(ValueError, match="bad input 5"):  # the user's type, not retried
        h.options(method_name="fail").remote(5).result(timeout=30)
    assert h.router.statistics()["retries"] == 0
    assert h.remote(6).result(timeout=30)["x"] == 6  # app errors don't hurt the replica
    assert h.router.statistics()["in_flight"] == 0
    assert repr(h.router) == ("<Router ep [backends: echo=1 | replicas: 2 running | in flight: 0 | "
                              "queued: 0]>")


def test_response_passed_to_another_call_and_to_a_ray_task(pool):
    pool.backend("m", Echo)
    h = pool.endpoint("ep", "m")
    double, add = h.options(method_name="double"), h.options(method_name="add")
    first = double.remote(5)
    assert add.remote(first, y=1).result(timeout=30) == 11  # the ref went replica to replica

    async def chained():
        return await add.remote(double.remote(20), y=2)

    assert asyncio.run(chained()) == 42

    @ray.remote
    def use(ref):
        return ref + 1

    assert ray.get(use.remote(double.remote(7).object_ref()), timeout=30) == 15


def test_handle_pickled_into_a_ray_task(pool):
    pool.backend("d", Echo)
    pool.endpoint("double", "d")
    controller = pool.serve_long_poll()
    h = get_handle("double", controller, "serveplane-test").options(method_name="double")
    assert h.remote(2).result(timeout=30) == 4   # LongPollSource in this process

    @ray.remote
    def use(handle, x):
        return handle.remote(x).result(timeout=30)

    assert ray.get(use.remote(h, 21), timeout=60) == 42


def test_fanout_with_an_erroring_replica_and_quorum(pool):
    replicas = pool.backend("f", Echo, replicas=3)
    h = pool.endpoint("ep", "f").options(method_name="ping")
    results = h.fanout("")
    assert sorted(results) == sorted(r.actor_name for r in replicas)
    assert all(name == value for name, value in results.items())
    victim = replicas[0]
    results = h.fanout(victim.replica_tag)
    errors = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    assert list(errors) == [victim.actor_name] and "refuses" in str(errors[victim.actor_name])
    assert len(h.fanout(victim.replica_tag, quorum=2)) == 3
    with pytest.raises(QuorumError, match="2 of 3 replicas answered, quorum is 3"):
        h.fanout(victim.replica_tag, quorum=3)


def test_sessions_stick_and_move_when_their_replica_dies(pool):
    pool.backend("s", SessionProbe, replicas=3)
    h = pool.endpoint("ep", "s")
    sid = "session-42"
    seen = collections.Counter(h.options(session_id=sid).remote().result(timeout=30)["replica"]
                               for _ in range(100))
    assert len(seen) == 1
    home = next(iter(seen))

    async def nested():
        async with h.session(sid) as s:
            first = await s.remote()
            again = await h.remote()  # no option: the context carries the session
            return first, again

    first, again = asyncio.run(nested())
    assert first["replica"] == again["replica"] == home and again["session"] == sid

    victim = next(r for r in pool.replicas("s") if r.actor_name == home)
    pool.kill(victim)
    deadline = time.monotonic() + 30
    while True:  # ray.kill returns before the actor is gone: a dying replica may still answer
        try:
            ray.get(victim.actor_handle.get_metrics.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            break
        assert time.monotonic() < deadline, f"{home} still answers 30s after ray.kill"
        time.sleep(0.05)
    # it moves at once (retried off the dead replica) and never goes back; once no replica is
    # backed off for being briefly unreachable (it happens on a loaded machine, and moves a
    # session for that moment), it sticks to one live replica again
    deadline = time.monotonic() + 30
    while True:
        moved = [h.options(session_id=sid).remote().result(timeout=30)["replica"] for _ in range(20)]
        assert home not in moved
        if len(set(moved)) == 1 or time.monotonic() > deadline:
            break
    assert len(set(moved)) == 1, f"the session did not settle on one replica: {moved}"
    assert h.router.statistics()["session_moves"] >= 1


def test_slow_shadow_never_delays_the_primary(pool):
    pool.backend("fast", Echo, "fast")
    pool.backend("slow", SlowEcho, 2.0)
    h = pool.endpoint("ep", "fast", shadows={"slow": 1.0})
    h.remote(0).result(timeout=30)  # warm
    t0 = time.monotonic()
    assert h.remote(1).result(timeout=30)["tag"] == "fast"
    assert time.monotonic() - t0 < 0.5
    stats = h.router.statistics()["shadows"]["slow"]
    assert stats["sent"] == 2 and stats["completed"] == 0
    wait_until(lambda: h.router.statistics()["shadows"]["slow"]["completed"] == 2, timeout=10)
    stats = h.router.statistics()["shadows"]["slow"]
    assert stats["avg_latency_s"] >= 1.9 and stats["errors"] == 0
    assert stats["compared"] == 2 and stats["agreement"] == 0.0  # dict vs plain echo


def test_back_pressure_with_a_slow_replica(pool):
    pool.backend("slow", SlowEcho, 1.0, max_concurrent_queries=1, max_queued_requests=2)
    h = pool.endpoint("ep", "slow")
    running = h.remote(0)                    # takes the only slot
    queued = [h.remote(i) for i in (1, 2)]   # wait in the router's queue
    with pytest.raises(BackPressureError, match="endpoint 'ep' .*limit .*is 2"):
        h.remote(3)
    assert running.result(timeout=30) == 0
    assert [q.result(timeout=30) for q in queued] == [1, 2]
    assert h.router.statistics()["back_pressure_rejections"] == 1


def test_queued_request_never_waits_for_an_unread_answer(pool):
    pool.backend("one", Echo, max_concurrent_queries=1)
    h = pool.endpoint("ep", "one")
    unread = h.remote("first")
    second = h.remote("second")      # queued behind a slot whose answer nobody reads
    assert second.result(timeout=30)["x"] == "second"
    assert unread.result(timeout=30)["x"] == "first"


def test_request_waits_for_the_first_replica(pool):
    pool.backend("late", Echo, replicas=0)
    h = pool.endpoint("ep", "late")
    early = h.remote("early")
    pool.add_replica("late")
    assert early.result(timeout=30)["x"] == "early"


def test_in_flight_request_retried_when_its_replica_is_killed(pool):
    pool.backend("slow", SlowEcho, 1.0, replicas=2)
    h = pool.endpoint("ep", "slow")
    response = h.remote("payload")
    time.sleep(0.2)
    victim = response.replica
    pool.kill(victim)
    assert response.result(timeout=30) == "payload"
    stats = h.router.statistics()
    assert stats["retries"] == 1 and stats["dead_replicas"] == [victim.actor_name]
    pool.publish(keys.replicas("slow"), tuple(pool.replicas("slow")))  # the controller has not noticed
    assert victim.actor_name not in h.router.statistics()["replicas"]["slow"]


def test_not_idempotent_fails_with_replica_died(pool):
    pool.backend("slow", SlowEcho, 1.0, replicas=2, idempotent=False)
    h = pool.endpoint("ep", "slow")
    response = h.remote("payload")
    time.sleep(0.2)
    victim = response.replica.actor_name
    pool.kill(response.replica)
    with pytest.raises(ReplicaDiedError, match=f"replica {victim} died.*idempotent=False"):
        response.result(timeout=30)


def test_response_argument_recovered_when_its_replica_dies(pool):
    pool.backend("slow", SlowEcho, 1.0, replicas=2)
    pool.backend("add", Echo)
    slow = pool.endpoint("slow", "slow").options(method_name="double")
    add = pool.endpoint("add", "add").options(method_name="add")
    inner = slow.remote(5)
    outer = add.remote(inner, y=1)
    time.sleep(0.2)
    pool.kill(inner.replica)
    assert outer.result(timeout=30) == 11
    assert inner.result(timeout=30) == 10
    assert slow.router.statistics()["retries"] == 1
    assert add.router.statistics()["retries"] == 1 and add.router.statistics()["dead_replicas"] == []
