"""Control-plane defects that need real Ray (and a real Redis) to show: each failed before
its fix. The rest of them are pinned Ray-free in tests/unit/controller and by the simulator."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

import serveplane
from serveplane.exceptions import GoalNotFoundError, InvalidConfigError, ReplicaStartupError
from tests.integration.controller.backends import AsyncConfigured, BatchSizes, Counter
from tests.integration.controller.helpers import call_replica, replica_actors, running_count

pytestmark = pytest.mark.ray


def test_options_ray_refuses_are_refused_before_anything_changes(serve_instance):
    """Ray refuses resources={'GPU': 1} in .options(): the goal used to wait 120 s and end
    in a RequestTimeoutError with no cause; then it failed after three starts; now the call
    is refused at once and nothing is created (a start Ray refuses is still a failed start
    in the controller: tests/unit/controller)."""
    client = serve_instance
    started = time.monotonic()
    with pytest.raises(InvalidConfigError, match="cannot scale backend 'gpu': Ray refuses.*num_gpus"):
        client.create_backend("gpu", Counter, ray_actor_options={"resources": {"GPU": 1}}, timeout_s=60)
    elapsed = time.monotonic() - started
    assert elapsed < 2, f"the refusal took {elapsed:.1f}s"
    assert "gpu" not in client.list_backends()


def test_async_reconfigure_with_an_initial_user_config_starts(serve_instance):
    client = serve_instance
    client.create_backend("cfg", AsyncConfigured, config={"user_config": {"threshold": 3}}, timeout_s=60)
    client.create_endpoint("cfg", backend="cfg")
    assert client.get_handle("cfg").remote(1).result(timeout=30) == {"config": {"threshold": 3}, "x": 1}


def _batch_sizes(client, handle, n: int) -> list[int]:
    for response in [handle.remote(i) for i in range(n)]:
        response.result(timeout=30)
    (actor,) = replica_actors(client, "batches").values()
    return call_replica(actor, method="seen")


def test_max_batch_size_change_reaches_running_replicas_in_place(serve_instance):
    """After update_backend_config(max_batch_size=6) batches used to stay at 2."""
    client = serve_instance
    client.create_backend("batches", BatchSizes, timeout_s=60,
                          config={"max_batch_size": 2, "batch_wait_timeout": 0.2})
    client.create_endpoint("batches", backend="batches")
    handle = client.get_handle("batches")
    (replica_before,) = replica_actors(client, "batches").values()
    before = _batch_sizes(client, handle, 12)
    assert max(before) == 2
    client.update_backend_config("batches", {"max_batch_size": 6})  # returns once replicas run it
    after = _batch_sizes(client, handle, 12)[len(before):]
    assert 2 < max(after) <= 6, f"batch sizes after the change: {after}"
    (replica_after,) = replica_actors(client, "batches").values()
    assert replica_after._actor_id == replica_before._actor_id  # applied in place, not rolled


def test_unknown_goal_id_raises_not_found(serve_instance):
    with pytest.raises(GoalNotFoundError, match="is unknown"):
        serve_instance._call("wait_for_goal", uuid.uuid4().hex, 0.1)


def test_status_says_how_strong_the_fence_is(serve_instance):
    status = serve_instance.get_status()
    assert status["fencing"].startswith("weaker on ray://") and not status["stale"]


def test_redis_outage_with_a_replica_death_then_scale_up(ray_session, redis_server):
    """Redis stops, a replica dies during the outage, Redis comes back: a later
    update_backend_config(num_replicas=3) used to never complete."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    client = serveplane.start(kv_store=redis_server.url, namespace=ns)
    try:
        client.create_backend("m", Counter, config={"num_replicas": 2, "health_check_period_s": 0.5},
                              timeout_s=60)
        assert client.get_status()["fencing"].startswith("atomic")
        redis_server.stop()
        victim = next(iter(replica_actors(client, "m").values()))
        ray.kill(victim, no_restart=True)
        deadline = time.monotonic() + 30
        while running_count(client, "m") != 1:  # the controller sees the death while Redis is down
            assert time.monotonic() < deadline, client.get_status()["backends"]["m"]
            time.sleep(0.1)
        redis_server.start()
        client.update_backend_config("m", {"num_replicas": 3}, timeout_s=60)
        assert running_count(client, "m") == 3
        assert len(replica_actors(client, "m")) == 3  # the dead one is gone, nothing orphaned
    finally:
        client.shutdown()
