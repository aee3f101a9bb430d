"""Issue 22 #13: scale-down and rolling updates lose nothing, with idempotent=False.

A replica told to drain must not be killed while any router may still send to it: a
request that reaches a killed replica (or is on its way) fails with ReplicaDiedError and,
not idempotent, cannot be retried. The replica's drain ends only when nothing runs and
no caller has arrived for a quiet period.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid

import cloudpickle
import pytest
import ray

from serveplane import BackendConfig
from serveplane.backend_state.wrapper import ReplicaActorWrapper, ReplicaSpec
from serveplane.exceptions import ReplicaFullError
from serveplane.records import RequestMetadata
from tests.integration.health.drain_backends import Work
from tests.waiting import wait_for

pytestmark = pytest.mark.ray


def _start_replica(cls: type, config: BackendConfig) -> ReplicaActorWrapper:
    ns = f"drain-{uuid.uuid4().hex[:8]}"
    wrapper = ReplicaActorWrapper("b", uuid.uuid4().hex[:8], ns)
    wrapper.start(ReplicaSpec("b", "v1", "c1", "", "", config.model_dump(mode="json"),
                              {"num_cpus": 0}, cloudpickle.dumps(cls), cloudpickle.dumps(((), {}))))
    ray.get(wrapper.actor_handle.ready.remote(), timeout=120)
    return wrapper


def test_drain_does_not_end_while_callers_still_arrive(ray_session):
    """A router that has not yet heard that the replica left keeps sending (each refused as
    draining, then tried elsewhere). Killing the replica then fails the request on its way:
    so the drain waits until nobody has arrived for a while, not only until nothing runs."""
    wrapper = _start_replica(Work, BackendConfig(max_concurrent_queries=4))
    actor = wrapper.actor_handle
    stop = threading.Event()
    last_sent = [0.0]

    def keep_sending() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                ray.get(actor.handle_request.remote(RequestMetadata(f"r{i}", "ep"), i), timeout=60)
            except ray.exceptions.RayTaskError as exc:
                assert isinstance(exc.cause, ReplicaFullError), exc
            last_sent[0] = time.monotonic()

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        wait_for(lambda: last_sent[0] > 0, 60, "a first request answered")
        drain = actor.prepare_for_shutdown.remote(10.0)
        # callers keep arriving for a while after the drain began: it must not end meanwhile
        ready, _ = ray.wait([drain], timeout=0.5)
        assert not ready, "the drain ended while callers still arrived"
        stop.set()
        sender.join(timeout=60)
        stopped = time.monotonic()
        assert ray.get(drain, timeout=30) == 0
        assert time.monotonic() - stopped < 9, "the drain ran to its timeout"
    finally:
        stop.set()
        ray.kill(actor, no_restart=True)


def test_scaling_and_rolling_update_under_load_lose_nothing(serve_instance):
    """The issue's scenario: 24 requests of 20 ms in flight from one handle, scaled
    4 -> 1 -> 3, then rolled over with update_backend; not one request may fail."""
    client = serve_instance
    client.create_backend("lossless", Work, config=BackendConfig(
        num_replicas=4, idempotent=False, graceful_shutdown_timeout_s=10))
    client.create_endpoint("lossless", backend="lossless")
    handle = client.get_handle("lossless")
    stop = threading.Event()
    failures: list[BaseException] = []
    answered = [0]

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                assert handle.remote(i).result(timeout=60) == i
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the defect
                failures.append(exc)

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        workers = [pool.submit(load, w) for w in range(24)]
        try:
            wait_for(lambda: answered[0] > 200, 120, "load running on every replica")
            for step in ({"num_replicas": 1}, {"num_replicas": 3}, {"num_replicas": 1},
                         {"num_replicas": 3}):
                client.update_backend_config("lossless", step, timeout_s=120)
                before = answered[0]
                wait_for(lambda: answered[0] > before + 100, 60, "load after the step")
            client.update_backend("lossless", Work, "v2", timeout_s=120)
            before = answered[0]
            wait_for(lambda: answered[0] > before + 100, 60, "load after the update")
        finally:
            stop.set()
            for w in workers:
                w.result(timeout=120)
    assert not failures, f"{len(failures)} of {answered[0] + len(failures)} requests failed: {failures[:3]}"
