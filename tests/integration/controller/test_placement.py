"""Placement: a backend no node can hold is refused at once, naming the resource (as Ray
Serve 1.x's "Cannot scale backend"); one the cluster is merely too full for waits, and
get_status() says why. The session's Ray has 8 logical CPUs and 2 logical GPUs on one node."""

from __future__ import annotations

import time

import pytest

from serveplane.placement import UnplaceableError, infeasible_reason, replica_demand, waiting_note
from tests.integration.controller.backends import Counter

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("options, rule", [
    ({"resources": {"MagicMLResource": 100}}, "MagicMLResource=100, but no node has MagicMLResource"),
    ({"num_gpus": 3}, "GPU=3, but the largest node has GPU=2"),
    ({"num_cpus": 64}, "CPU=64, but the largest node has CPU=8"),
], ids=["unknown-resource", "more-gpus-than-any-node", "more-cpus-than-any-node"])
def test_a_replica_no_node_can_hold_is_refused_at_once(serve_instance, options, rule):
    client = serve_instance
    started = time.monotonic()
    with pytest.raises(UnplaceableError, match=f"cannot scale backend 'never': one replica needs {rule}"):
        client.create_backend("never", Counter, ray_actor_options=options)
    assert time.monotonic() - started < 2
    assert "never" not in client.list_backends()


def test_a_full_cluster_waits_and_status_says_so(serve_instance):
    client = serve_instance
    goal = client.create_backend("big", Counter, ray_actor_options={"num_gpus": 2},
                                 config={"num_replicas": 2}, blocking=False)
    assert goal is not None
    deadline = time.monotonic() + 30
    while True:
        status = client.get_status()["backends"]["big"]
        if status["replicas"].get("RUNNING") == 1 and status["placement"]:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["placement"].startswith("1 replica(s) may be waiting for resources: each needs GPU=2"), status
    assert "free now: GPU=0 of 2" in status["placement"]
    from serveplane.cli import status_table

    assert "waiting: 1 replica(s) may be waiting" in status_table(client)
    client.delete_backend("big", force=True)


def test_pure_rules():
    assert replica_demand({}) == {"CPU": 1.0}
    assert replica_demand({"num_gpus": 0.5}) == {"GPU": 0.5}
    assert replica_demand({"num_cpus": 0.25, "resources": {"tpu": 1}, "accelerator_type": "A100"}) == {
        "CPU": 0.25, "tpu": 1.0, "accelerator_type:A100": 0.001}
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 1.0, "tpu": 2.0}]
    assert infeasible_reason("b", {"CPU": 2.0, "GPU": 1.0}, nodes) is None
    assert "no single node has all of it" in infeasible_reason("b", {"CPU": 1.0, "tpu": 1.0, "GPU": 1.0},
                                                               nodes)
    assert waiting_note({"CPU": 1.0}, 2, {"CPU": 3.0}, {"CPU": 4.0}) is None
    assert "free now: CPU=0.5 of 4" in waiting_note({"CPU": 1.0}, 2, {"CPU": 0.5}, {"CPU": 4.0})
