"""The classic API against a real controller and real replica actors."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from serveplane import BackendConfig
from serveplane.exceptions import (
    BackendNotFoundError,
    DuplicateError,
    EndpointNotFoundError,
    InUseError,
    InvalidConfigError,
    ReplicaStartupError,
)
from tests.integration.controller.backends import Broken, Counter, Slow, echo
from tests.integration.controller.helpers import call_replica, replica_actors, running_count

pytestmark = [pytest.mark.ray]


def test_backend_endpoint_lifecycle(serve_instance):
    client = serve_instance
    client.create_backend("m:v1", Counter, "v1", config=BackendConfig(num_replicas=2))
    client.create_backend("m:v2", Counter, "v2", config={"num_replicas": 1})
    client.create_backend("fn", echo)
    actors = replica_actors(client, "m:v1")
    assert len(actors) == 2
    assert {call_replica(a, 3) for a in actors.values()} == {"v1:3"}
    assert call_replica(next(iter(replica_actors(client, "fn").values())), "hi") == "hi"

    client.create_endpoint("m", backend="m:v1", route="/m", methods=["GET", "POST"])
    client.set_traffic("m", {"m:v1": 0.9, "m:v2": 0.1})
    client.shadow_traffic("m", "fn", 0.2)
    assert client.list_endpoints() == {"m": {
        "route": "/m", "methods": ["GET", "POST"], "traffic": {"m:v1": 0.9, "m:v2": 0.1},
        "shadows": {"fn": 0.2}, "router": "round_robin", "batch_size": None, "batch_timeout_s": 0.0,
        "rollout": None}}
    assert set(client.list_backends()) == {"m:v1", "m:v2", "fn"}

    with pytest.raises(InUseError, match="backend 'fn' is still used by endpoint\\(s\\) m"):
        client.delete_backend("fn")
    client.shadow_traffic("m", "fn", 0)
    client.delete_backend("fn")
    assert "fn" not in client.list_backends()
    assert replica_actors(client, "fn") == {}

    client.delete_endpoint("m")
    client.delete_endpoint("m")  # no-op
    client.delete_backend("nope")  # no-op
    assert client.list_endpoints() == {}


def test_rules_refuse_before_anything_changes(serve_instance):
    client = serve_instance
    client.create_backend("a", echo)
    client.create_endpoint("ep", backend="a", route="/ep")
    before = (client.list_backends(), client.list_endpoints())
    cases = [
        (lambda: client.create_backend("a", Counter), DuplicateError, "backend 'a' already exists"),
        (lambda: client.create_endpoint("ep2", backend="a", route="/ep"), DuplicateError,
         "route '/ep' is already used"),
        (lambda: client.create_endpoint("ep3", backend="a", route="x"), InvalidConfigError,
         "must start with '/'"),
        (lambda: client.create_endpoint("ep4", backend="zz"), BackendNotFoundError, "backend 'zz'"),
        (lambda: client.set_traffic("ep", {"a": 0.5}), InvalidConfigError, "sum to 0.5"),
        (lambda: client.set_traffic("ep", {"a": 1.5, "zz": -0.5}), InvalidConfigError, ">= 0"),
        (lambda: client.set_traffic("nope", {"a": 1}), EndpointNotFoundError, "endpoint 'nope'"),
        (lambda: client.shadow_traffic("ep", "a", 1.5), InvalidConfigError, "must lie in \\[0, 1\\]"),
        (lambda: client.shadow_traffic("ep", "zz", 0.5), BackendNotFoundError, "backend 'zz'"),
        (lambda: client.create_backend("o", echo, ray_actor_options={"name": "x"}),
         InvalidConfigError, "controller owns"),
        (lambda: client.create_backend("o", echo, ray_actor_options={"max_restarts": 2}),
         InvalidConfigError, "max_restarts"),
        (lambda: client.create_backend("o", echo, config={"user_config": {1, 2}}),
         InvalidConfigError, "not JSON-serializable"),
        (lambda: client.update_backend_config("zz", {"num_replicas": 2}), BackendNotFoundError,
         "backend 'zz' does not exist"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert (client.list_backends(), client.list_endpoints()) == before
    # identical re-creation is idempotent
    client.create_backend("a", echo)
    client.create_endpoint("ep", backend="a", route="/ep")
    assert (client.list_backends(), client.list_endpoints()) == before


def test_update_config_merges_and_reconfigures_in_place(serve_instance):
    client = serve_instance
    client.create_backend("c", Counter, config=BackendConfig(num_replicas=2, user_config={"threshold": 1},
                                                              max_concurrent_queries=5))
    actors = replica_actors(client, "c")
    pids = {call_replica(a, method="info")["pid"] for a in actors.values()}
    client.update_backend_config("c", BackendConfig(user_config={"threshold": 2}))
    cfg = client.get_backend_config("c")
    assert cfg.num_replicas == 2 and cfg.max_concurrent_queries == 5 and cfg.user_config == {"threshold": 2}
    after = replica_actors(client, "c")
    assert set(after) == set(actors), "reconfigure must not replace replicas"
    infos = [call_replica(a, method="info") for a in after.values()]
    assert {i["pid"] for i in infos} == pids and {i["threshold"] for i in infos} == {2}

    client.update_backend_config("c", {"num_replicas": 3})
    assert len(replica_actors(client, "c")) == 3
    assert client.get_backend_config("c").user_config == {"threshold": 2}


def test_code_change_rolls_without_dropping_capacity(serve_instance):
    client = serve_instance
    client.create_backend("r", Counter, "old", config={"num_replicas": 2})
    low = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            low.append(running_count(client, "r"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        client.update_backend("r", Counter, "new")
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert min(low) >= 2, f"running replicas dropped to {min(low)} during the rollout"
    outputs = {call_replica(a, 1) for a in replica_actors(client, "r").values()}
    assert outputs == {"new:1"}


def test_scale_down_drains_in_flight_requests(serve_instance):
    client = serve_instance
    client.create_backend("s", Slow, config={"num_replicas": 2, "graceful_shutdown_timeout_s": 10})
    actors = list(replica_actors(client, "s").values())
    from serveplane.records import RequestMetadata

    meta = RequestMetadata(request_id="x", endpoint="direct")
    refs = [a.handle_request.remote(meta, 2.0) for a in actors]
    time.sleep(0.3)
    client.update_backend_config("s", {"num_replicas": 1})
    assert ray.get(refs, timeout=30) == ["done", "done"]  # neither request was cut off
    assert len(replica_actors(client, "s")) == 1


def test_broken_constructor_reports_the_error(serve_instance):
    client = serve_instance
    with pytest.raises(ReplicaStartupError, match="weights file '/models/missing.pt' not found"):
        client.create_backend("broken", Broken, timeout_s=60)
    client.delete_backend("broken")
    assert "broken" not in client.list_backends()


def test_fractional_gpus_share_one_logical_gpu(serve_instance):
    client = serve_instance
    client.create_backend("g", Counter, ray_actor_options={"num_gpus": 0.5},
                          config={"num_replicas": 2})
    gpus = [call_replica(a, method="info")["gpus"] for a in replica_actors(client, "g").values()]
    assert len(gpus) == 2 and all(len(g) == 1 for g in gpus)
    # two 0.5 replicas pack onto one GPU before a second is used
    assert gpus[0] == gpus[1]


def test_non_blocking_returns_goal_id(serve_instance):
    client = serve_instance
    goal = client.create_backend("nb", echo, blocking=False)
    assert isinstance(goal, str)
    client._wait(goal, True, 60)
    assert running_count(client, "nb") == 1
