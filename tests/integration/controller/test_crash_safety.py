"""Crash safety: controller kills mid-sequence, zombie controllers, cluster restarts."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
import ray

import serveplane
from serveplane.controller.controller import ServeController
from serveplane.exceptions import StaleEpochError
from serveplane.records import CONTROLLER_NAME
from tests.conftest import TEST_KEY, run_script
from tests.integration.controller.backends import Counter, echo
from tests.integration.controller.helpers import call_replica, replica_actors

pytestmark = [pytest.mark.ray]


def _script(rng: random.Random) -> list[tuple[str, tuple, dict]]:
    """A scripted sequence of 30+ API calls exercising every kind of change."""
    calls: list[tuple[str, tuple, dict]] = [
        ("create_backend", ("a", echo), {}),
        ("create_backend", ("b", Counter, "b"), {}),
        ("create_endpoint", ("ep1",), {"backend": "a", "route": "/ep1"}),
        ("create_endpoint", ("ep2",), {"backend": "b", "route": "/ep2", "methods": ["POST"]}),
    ]
    for i in range(12):
        w = round(rng.random(), 3)
        calls.append(("set_traffic", ("ep1", {"a": w, "b": round(1 - w, 3)}), {}))
        calls.append(("shadow_traffic", ("ep2", "a", round(rng.random(), 2) if i % 3 else 0), {}))
    calls += [
        ("update_backend_config", ("b", {"num_replicas": 2}), {}),
        ("update_backend_config", ("b", {"user_config": {"threshold": 7}}), {}),
        ("create_backend", ("c", echo), {}),
        ("create_endpoint", ("ep3",), {"backend": "c", "route": "/ep3"}),
        ("set_traffic", ("ep3", {"c": 0.5, "a": 0.5}), {}),
        ("delete_endpoint", ("ep3",), {}),
        ("delete_backend", ("c",), {}),
        ("update_backend_config", ("b", {"num_replicas": 1}), {}),
    ]
    return calls


def _apply(model: dict, name: str, args: tuple, kwargs: dict) -> None:
    backends, endpoints = model["backends"], model["endpoints"]
    if name == "create_backend":
        backends[args[0]] = {"num_replicas": 1, "user_config": None}
    elif name == "update_backend_config":
        backends[args[0]].update(args[1])
    elif name == "delete_backend":
        backends.pop(args[0], None)
    elif name == "create_endpoint":
        endpoints[args[0]] = {"route": kwargs["route"], "methods": kwargs.get("methods", ["GET"]),
                              "traffic": {kwargs["backend"]: 1.0}, "shadows": {}}
    elif name == "delete_endpoint":
        endpoints.pop(args[0], None)
    elif name == "set_traffic":
        endpoints[args[0]]["traffic"] = dict(args[1])
    elif name == "shadow_traffic":
        shadows = endpoints[args[0]]["shadows"]
        if args[2] == 0:
            shadows.pop(args[1], None)
        else:
            shadows[args[1]] = args[2]


@pytest.mark.timeout(600)
def test_controller_killed_at_random_points_during_30_calls(serve_instance):
    client = serve_instance
    rng = random.Random(7)
    calls = _script(rng)
    assert len(calls) >= 30
    kills = 10
    kill_at = sorted(rng.sample(range(1, len(calls)), kills))
    model: dict = {"backends": {}, "endpoints": {}}
    killed = []

    def kill_soon(delay: float) -> None:
        time.sleep(delay)
        controller = ray.get_actor(CONTROLLER_NAME, namespace=client._namespace)
        ray.kill(controller, no_restart=False)
        killed.append(time.monotonic())

    started = time.monotonic()
    for i, (name, args, kwargs) in enumerate(calls):
        killer = None
        if i in kill_at:  # kill while this call is in flight (or just before / after it)
            killer = threading.Thread(target=kill_soon, args=(rng.uniform(0.0, 0.3),), daemon=True)
            killer.start()
        getattr(client, name)(*args, **kwargs)
        _apply(model, name, args, kwargs)
        if killer is not None:
            killer.join(timeout=10)
    elapsed = time.monotonic() - started
    assert len(killed) == kills

    # state matches every call that returned
    endpoints = client.list_endpoints()
    assert {n: {k: e[k] for k in ("route", "methods", "traffic", "shadows")}
            for n, e in endpoints.items()} == model["endpoints"]
    backends = client.list_backends()
    assert set(backends) == set(model["backends"])
    for tag, expected in model["backends"].items():
        assert backends[tag].num_replicas == expected["num_replicas"]
        assert backends[tag].user_config == expected["user_config"]

    # no replica orphaned or duplicated; no goal left pending
    deadline = time.monotonic() + 60
    while True:
        status = client.get_status()
        actual = {tag: len(replica_actors(client, tag)) for tag in model["backends"]}
        expected = {tag: b["num_replicas"] for tag, b in model["backends"].items()}
        stray = [n for n in {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                             if e["namespace"] == client._namespace}
                 if n.startswith("serveplane:") and n.split(":", 1)[1].split("#")[0] not in expected]
        if actual == expected and not stray and status["pending_goals"] == 0:
            break
        assert time.monotonic() < deadline, f"replicas {actual} != {expected}, stray {stray}, status {status}"
        time.sleep(0.5)
    # user_config reached every live replica of 'b' (recovered ones too), none re-applied wrongly
    infos = [call_replica(a, method="info") for a in replica_actors(client, "b").values()]
    assert [i["threshold"] for i in infos] == [7] * model["backends"]["b"]["num_replicas"]
    print(f"\n{len(calls)} calls, {kills} controller kills, {elapsed:.1f}s")


def test_recovery_time_after_kill(serve_instance):
    client = serve_instance
    client.create_backend("r", echo, config={"num_replicas": 2})
    controller = ray.get_actor(CONTROLLER_NAME, namespace=client._namespace)
    epoch = ray.get(controller.get_epoch.remote())
    t0 = time.monotonic()
    ray.kill(controller, no_restart=False)
    while True:
        try:
            status = client.get_status()
            if status["epoch"] > epoch and status["backends"]["r"]["replicas"].get("RUNNING") == 2:
                break
        except Exception:  # noqa: BLE001 - restarting
            pass
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    recovery = time.monotonic() - t0
    print(f"\ncontroller recovery (kill -> 2 replicas RUNNING again): {recovery:.2f}s")
    assert len(replica_actors(client, "r")) == 2  # recovered, not re-created


def test_zombie_controller_cannot_overwrite_state(serve_instance):
    client = serve_instance
    client.create_backend("a", echo)
    client.create_backend("b", echo)
    client.create_endpoint("ep", backend="a")
    ns = client._namespace
    successor = ray.remote(ServeController).options(num_cpus=0).remote(f"ray://{ns}", ns, None,
                                                                        state_key=TEST_KEY)
    assert ray.get(successor.get_epoch.remote(), timeout=60) > ray.get(
        client._controller.get_epoch.remote())
    with pytest.raises(StaleEpochError, match="refused"):
        client.set_traffic("ep", {"a": 0.5, "b": 0.5})
    # the successor's view (and the stored checkpoint) never saw the zombie's write
    assert ray.get(successor.list_endpoints.remote())["ep"]["traffic"] == {"a": 1.0}
    ray.get(successor.shutdown.remote(), timeout=60)
    ray.kill(successor)


@pytest.mark.timeout(300)
def test_sqlite_state_survives_a_cluster_restart(tmp_path):
    db = tmp_path / "state.db"
    ns = f"sq-{uuid.uuid4().hex[:6]}"
    common = f"""
import ray, serveplane
from serveplane.records import RequestMetadata
ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
client = serveplane.start(kv_store="sqlite:///{db}", namespace="{ns}")
"""
    run_script(common + """
from tests.integration.controller.backends import Counter
client.create_backend("m:v1", Counter, "v1", config={"num_replicas": 2})
client.create_backend("m:v2", Counter, "v2")
client.create_endpoint("m", backend="m:v1", route="/m")
client.set_traffic("m", {"m:v1": 0.7, "m:v2": 0.3})
ray.shutdown()
""")
    out = run_script(common + """
import time
print("ENDPOINTS", client.list_endpoints()["m"]["traffic"])
print("BACKENDS", sorted(client.list_backends()))
deadline = time.time() + 90
while client.get_status()["backends"]["m:v1"]["replicas"].get("RUNNING") != 2:
    assert time.time() < deadline, client.get_status()
    time.sleep(0.2)
names = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e["name"].startswith("serveplane:m:v1#")]
actor = ray.get_actor(names[0], namespace="%s")
print("CALL", ray.get(actor.handle_request.remote(RequestMetadata("r", "m"), 5), timeout=30))
client.shutdown()
ray.shutdown()
""" % ns)
    assert "ENDPOINTS {'m:v1': 0.7, 'm:v2': 0.3}" in out
    assert "BACKENDS ['m:v1', 'm:v2']" in out
    assert "CALL v1:5" in out


@pytest.mark.timeout(300)
def test_placement_across_nodes_with_custom_resources():
    out = run_script("""
import ray, serveplane
from ray.cluster_utils import Cluster
from serveplane.records import RequestMetadata
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
node_b = cluster.add_node(num_cpus=2, resources={"zone_b": 2})
ray.init(address=cluster.address, logging_level="WARNING")
client = serveplane.start(kv_store="memory://", namespace="place")
from tests.integration.controller.backends import echo
client.create_backend("pinned", echo, ray_actor_options={"resources": {"zone_b": 1}},
                      config={"num_replicas": 2})
status = client.get_status()
names = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e["name"].startswith("serveplane:pinned#")]
nodes = {ray.get(ray.get_actor(n, namespace="place").ready.remote())["node_id"] for n in names}
print("NODES", nodes == {node_b.node_id}, len(names))
client.shutdown()
ray.shutdown()
cluster.shutdown()
""")
    assert "NODES True 2" in out
