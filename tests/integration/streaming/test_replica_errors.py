"""Issue 22 #14, replica side, on real Ray: what a replica raises for serveplane's reasons is
a serveplane type naming endpoint and backend; a user's exception keeps its type; one
batch-mate's cancellation does not reach the others (they used to get TaskCancelledError)."""

from __future__ import annotations

import time
import uuid

import cloudpickle
import pytest
import ray

from serveplane import BackendConfig
from serveplane.backend_state.wrapper import ReplicaActorWrapper, ReplicaSpec
from serveplane.exceptions import RequestCancelledError, RequestTimeoutError
from serveplane.records import RequestMetadata
from tests.integration.health.drain_backends import Mates

pytestmark = pytest.mark.ray


@pytest.fixture
def mates(ray_session):
    wrapper = ReplicaActorWrapper("mates", uuid.uuid4().hex[:8], f"errors-{uuid.uuid4().hex[:8]}")
    wrapper.start(ReplicaSpec("mates", "v1", "c1", "", "", BackendConfig().model_dump(mode="json"),
                              {"num_cpus": 0}, cloudpickle.dumps(Mates), cloudpickle.dumps(((), {}))))
    ray.get(wrapper.actor_handle.ready.remote(), timeout=120)
    yield wrapper.actor_handle
    ray.kill(wrapper.actor_handle, no_restart=True)


def test_a_batch_mate_cancelled_inside_fails_alone(mates):
    out = ray.get(mates.handle_batch.remote(RequestMetadata("r1", "ep"),
                                            [(("a",), {}), (("cancel me",), {}), (("b",), {})]),
                  timeout=60)
    assert out[0] == (True, "a") and out[2] == (True, "b")
    assert not out[1][0] and isinstance(out[1][1], RequestCancelledError)
    assert "endpoint 'ep'" in str(out[1][1]) and "backend 'mates'" in str(out[1][1])


def test_the_users_own_timeout_keeps_its_type_and_a_late_request_names_where(mates):
    meta = RequestMetadata("r2", "ep", "own_timeout", deadline=time.time() + 60)
    with pytest.raises(TimeoutError, match="the model's own timeout") as info:
        ray.get(mates.handle_request.remote(meta), timeout=60)
    assert not isinstance(info.value, RequestTimeoutError)
    late = RequestMetadata("r3", "ep", deadline=time.time() - 1)
    with pytest.raises(RequestTimeoutError) as info:
        ray.get(mates.handle_request.remote(late, "x"), timeout=60)
    cause = info.value.cause if isinstance(info.value, ray.exceptions.RayTaskError) else info.value
    assert isinstance(cause, RequestTimeoutError)
    assert "endpoint 'ep'" in str(cause) and "backend 'mates'" in str(cause) and "did not run" in str(cause)
