"""Progressive rollouts against real Ray: a live load runs while the controller moves the
canary, and the figures routers report decide every step."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray

from serveplane.records import CONTROLLER_NAME
from tests.integration.rollout.backends import Version

pytestmark = pytest.mark.ray

GUARDS = {"max_error_rate": 0.05, "max_latency_ratio": 2.0, "min_requests": 30}


class Load:
    """Calls the endpoint from a background event loop until stopped, each request awaited on
    its own (as an HTTP proxy or an async caller does); remembers who answered."""

    def __init__(self, handle, in_flight: int = 4) -> None:
        self.handle, self.in_flight = handle, in_flight
        self.versions: list[str] = []
        self.failures: list[float] = []  # wall-clock times a caller saw a failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async def caller(start: int) -> None:
            i = start
            while not self._stop.is_set():
                try:
                    self.versions.append((await self.handle.remote(i))["version"])
                except Exception:  # noqa: BLE001 - counted
                    self.failures.append(time.time())
                i += self.in_flight

        await asyncio.gather(*(caller(j) for j in range(self.in_flight)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def deploy(client, **canary):
    client.create_backend("v1", Version, "v1", timeout_s=60)
    client.create_backend("v2", Version, "v2", timeout_s=60, **canary)
    client.create_endpoint("model", backend="v1")
    return client.get_handle("model")


def wait_final(client, handle, source: dict, timeout_s: float = 120.0) -> tuple[dict, float | None]:
    """Poll until the rollout ends; also when this process's router first routed ``source``
    again (wall clock), for the breach-to-restored figure."""
    deadline = time.monotonic() + timeout_s
    restored_at, saw_canary = None, False
    while True:
        rollout = client.get_rollout("model")
        routed = handle.router.statistics()
        saw_canary |= routed["traffic"] != source or bool(routed["shadow_traffic"])
        if saw_canary and routed["traffic"] == source and not routed["shadow_traffic"] \
                and restored_at is None:
            restored_at = time.time()
        if rollout["state"] in ("succeeded", "rolled_back", "aborted") and \
                (rollout["state"] != "rolled_back" or restored_at is not None):
            return rollout, restored_at
        assert time.monotonic() < deadline, f"rollout still {rollout['state']}: {rollout['reason']}"
        time.sleep(0.02)


def test_a_good_canary_goes_through_every_step(serve_instance):
    client = serve_instance
    handle = deploy(client)
    with Load(handle):
        rollout = client.start_rollout("model", "v2", steps=[0.2, 0.6, 1.0], interval_s=1, guards=GUARDS)
        assert rollout["state"] == "running"
        rollout = client.wait_for_rollout("model", timeout_s=120)
    assert rollout["state"] == "succeeded", rollout["reason"]
    assert client.list_endpoints()["model"]["traffic"] == {"v2": 1.0}
    decisions = [h["decision"] for h in rollout["history"]]
    assert [d.split(" (")[0] for d in decisions if d.startswith("advanced")] == [
        "advanced to step 1", "advanced to step 2"]
    assert all(h["readings"]["canary_requests"] >= 30 for h in rollout["history"]
               if h["decision"].startswith(("advanced", "succeeded")))


@pytest.mark.parametrize("canary,guard", [
    ({"error_rate": 0.3}, "canary error rate"),
    ({"delay_s": 0.06}, "canary p99 latency"),
], ids=["30pct-errors", "3x-slower"])
def test_a_bad_canary_is_rolled_back_before_its_second_step(serve_instance, canary, guard):
    client = serve_instance
    handle = deploy(client, **canary)
    with Load(handle, in_flight=8) as load:
        started = time.time()
        client.start_rollout("model", "v2", steps=[0.3, 1.0], interval_s=60, guards=GUARDS)
        rollout, restored_at = wait_final(client, handle, {"v1": 1.0})
    assert rollout["state"] == "rolled_back" and rollout["reason"].startswith(guard), rollout["reason"]
    assert rollout["step"] == 0, "rolled back before its second step"
    assert client.list_endpoints()["model"]["traffic"] == {"v1": 1.0}
    decided = next(h for h in rollout["history"] if h["decision"].startswith("rolled back"))
    first_bad = load.failures[0] if load.failures else started
    print(f"\n{guard}: rolled back at step 0 after {decided['readings']['canary_requests']} canary requests; "
          f"decision -> this router routed the source {restored_at - decided['at']:.3f}s later; "
          f"first bad answer -> restored {restored_at - first_bad:.2f}s")
    assert restored_at - decided["at"] < 5.0


def test_a_shadow_phase_with_disagreeing_answers_never_sends_live_traffic(serve_instance):
    client = serve_instance
    handle = deploy(client, answer="something else")
    with Load(handle) as load:
        client.start_rollout("model", "v2", steps=[0.5, 1.0], interval_s=1, shadow_s=30,
                             guards=dict(GUARDS, min_shadow_agreement=0.99))
        rollout, _ = wait_final(client, handle, {"v1": 1.0})
    assert rollout["state"] == "rolled_back" and "shadow agreement" in rollout["reason"]
    assert "v2" not in set(load.versions), "the canary answered a live request"
    assert client.list_endpoints()["model"]["shadows"] == {}


def test_a_controller_killed_mid_rollout_resumes_at_its_step(serve_instance):
    client = serve_instance
    handle = deploy(client)
    with Load(handle):
        client.start_rollout("model", "v2", steps=[0.2, 0.5, 1.0], interval_s=2, guards=GUARDS)
        deadline = time.monotonic() + 60
        while client.get_rollout("model")["step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        step = client.get_rollout("model")["step"]
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=client._namespace), no_restart=False)
        after = client.get_rollout("model")  # the client waits for the restarted controller
        assert after["step"] == step, "a restart must not skip or repeat a step"
        rollout = client.wait_for_rollout("model", timeout_s=120)
    assert rollout["state"] == "succeeded", rollout["reason"]
    decisions = [h["decision"] for h in rollout["history"]]
    assert any(d.startswith("controller restarted") for d in decisions)
    steps = [int(d.split("step ")[1].split(" ")[0]) for d in decisions if d.startswith("advanced")]
    assert steps == [1, 2], f"steps taken: {steps}"


def test_pause_resume_abort_through_the_client(serve_instance):
    client = serve_instance
    handle = deploy(client)
    handle.remote(1).result(timeout=30)  # this process's router is up
    client.start_rollout("model", "v2", steps=[0.5, 1.0], interval_s=600, guards=GUARDS)
    assert handle.router.statistics()["traffic"] == {"v1": 0.5, "v2": 0.5}  # read your writes
    assert client.pause_rollout("model")["state"] == "paused"
    assert client.resume_rollout("model")["state"] == "running"
    client.set_traffic("model", {"v1": 1.0})
    assert client.get_rollout("model")["state"] == "paused"
    rollout = client.abort_rollout("model")
    assert rollout["state"] == "aborted"
    assert client.list_endpoints()["model"]["traffic"] == {"v1": 1.0}
    assert handle.router.statistics()["traffic"] == {"v1": 1.0}


def test_a_redis_outage_during_a_step_neither_advances_nor_loses_the_rollout(ray_session, redis_server):
    import uuid

    import serveplane

    ns = f"t-{uuid.uuid4().hex[:8]}"
    client = serveplane.start(kv_store=redis_server.url, namespace=ns)
    try:
        handle = deploy(client)
        with Load(handle):
            client.start_rollout("model", "v2", steps=[0.2, 0.6, 1.0], interval_s=1, guards=GUARDS)
            redis_server.stop()
            stopped = time.monotonic()
            while time.monotonic() - stopped < 4:  # several intervals' worth of good traffic
                rollout = client.get_rollout("model")
                assert (rollout["state"], rollout["step"]) == ("running", 0), rollout["history"][-1]
                time.sleep(0.1)
            redis_server.start()
            rollout = client.wait_for_rollout("model", timeout_s=120)
        assert rollout["state"] == "succeeded", rollout["reason"]
        steps = [h["step"] for h in rollout["history"] if h["decision"].startswith("advanced")]
        assert steps == [1, 2], "every step was taken once, none skipped"
    finally:
        client.shutdown()
