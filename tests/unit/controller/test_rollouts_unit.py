"""Progressive rollouts through the real controller, with router reports fed by hand (no
Ray): steps, guards, the operator, the store going down, a controller restart."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from serveplane.backend_state.fake import FakeActorDirectory, FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.controller.persistence import inline_runner
from serveplane.exceptions import DuplicateError, InvalidConfigError, KVStoreUnavailableError
from serveplane.rollout.histogram import N_BUCKETS, bucket_of
from tests.conftest import TEST_KEY

LOOP = asyncio.new_event_loop()


def run(coro):
    return LOOP.run_until_complete(coro)


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Traffic:
    """One router's cumulative figures per backend, as routers report them."""

    def __init__(self, ctrl: ServeController, endpoint: str = "ep") -> None:
        self.started_at = ctrl._wall()
        self.ctrl = ctrl
        self.endpoint = endpoint
        self.router_id = uuid.uuid4().hex
        self.backends: dict[str, dict] = {}
        self.shadows: dict[str, dict] = {}

    def send(self, backend: str, n: int, failures: int = 0, latency_s: float = 0.01) -> None:
        b = self.backends.setdefault(backend, {"requests": 0, "app_errors": 0, "replica_failures": 0,
                                               "latency": [0] * N_BUCKETS})
        b["requests"] += n
        b["app_errors"] += failures
        b["latency"][bucket_of(latency_s)] += n
        self.report()

    def shadow(self, backend: str, compared: int, agreed: int) -> None:
        sh = self.shadows.setdefault(backend, {"compared": 0, "agreed": 0, "errors": 0})
        sh["compared"] += compared
        sh["agreed"] += agreed
        self.report()

    def report(self) -> None:
        stats = {"endpoint": self.endpoint, "started_at": self.started_at, "backends": {k: dict(v, latency=list(v["latency"]))
                                                         for k, v in self.backends.items()},
                 "shadows": {k: dict(v) for k, v in self.shadows.items()}}
        run(self.ctrl.record_handle_metrics(self.router_id, {}, stats))


@pytest.fixture
def setup():
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    url = f"memory://{uuid.uuid4().hex}"
    wall = Wall()

    def make():
        return ServeController(url, "unit", wrapper_factory=lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True),
                               run_loop=False, run_io=inline_runner, run_ray=inline_runner,
                               actors=FakeActorDirectory(), wall_clock=wall, state_key=TEST_KEY)

    ctrl = make()
    for tag in ("v1", "v2"):
        run(ctrl.create_backend(tag, f"code {tag}".encode(), b"init", {}, None))
    run(ctrl.create_endpoint("ep", "v1", "/ep", ["GET"]))
    for i in range(3):
        run(ctrl.control_step(float(i)))
    return ctrl, wall, make


def tick(ctrl, wall, seconds=0.0):
    wall.now += seconds
    run(ctrl.control_step(time.monotonic()))
    return run(ctrl.get_rollout("ep"))


GUARDS = {"max_error_rate": 0.05, "max_latency_ratio": 1.5, "min_requests": 50}


def test_a_good_canary_goes_through_every_step(setup):
    ctrl, wall, _ = setup
    rollout = run(ctrl.start_rollout("ep", "v2", [0.1, 0.5, 1.0], 30, GUARDS))
    assert rollout["state"] == "running" and rollout["weight"] == 0.1
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == pytest.approx({"v1": 0.9, "v2": 0.1})
    traffic = Traffic(ctrl)
    for step, weight in enumerate([0.1, 0.5, 1.0]):
        traffic.send("v1", 500)
        traffic.send("v2", 60)
        assert tick(ctrl, wall, 5)["step"] == step  # interval not over: waits
        assert "interval_s" in run(ctrl.get_rollout("ep"))["reason"]
        rollout = tick(ctrl, wall, 30)
    assert rollout["state"] == "succeeded"
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v2": 1.0}
    decisions = [h["decision"] for h in rollout["history"]]
    assert decisions[0].startswith("started") and decisions[-1].startswith("succeeded")
    assert len([d for d in decisions if d.startswith("advanced")]) == 2


def test_too_little_traffic_waits_and_says_why(setup):
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    traffic = Traffic(ctrl)
    traffic.send("v2", 20)
    rollout = tick(ctrl, wall, 60)
    assert (rollout["state"], rollout["step"]) == ("running", 0)
    assert "20 of min_requests 50" in rollout["reason"]


def test_a_failing_canary_is_rolled_back_mid_step_and_the_source_restored(setup):
    ctrl, wall, _ = setup
    run(ctrl.set_traffic("ep", {"v1": 1.0}))
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 300, GUARDS))
    traffic = Traffic(ctrl)
    traffic.send("v2", 64, failures=20)
    rollout = tick(ctrl, wall, 1)
    assert rollout["state"] == "rolled_back"
    assert rollout["reason"] == "canary error rate 0.312 > max_error_rate 0.05 over 64 requests"
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 1.0}
    assert ctrl.rollbacks[("ep", "max_error_rate")] == 1


def test_figures_from_before_a_step_do_not_count_in_it(setup):
    ctrl, wall, _ = setup
    traffic = Traffic(ctrl)
    traffic.send("v2", 1000, failures=900)  # an old bad version's figures, before the rollout
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    rollout = tick(ctrl, wall, 1)
    assert rollout["state"] == "running" and rollout["readings"]["canary_requests"] == 0


def test_a_manual_set_traffic_pauses_the_rollout_and_the_operator_wins(setup):
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    run(ctrl.set_traffic("ep", {"v1": 0.5, "v2": 0.5}))
    rollout = run(ctrl.get_rollout("ep"))
    assert rollout["state"] == "paused" and "set_traffic" in rollout["reason"]
    assert rollout["history"][-1]["decision"].startswith("paused: the operator changed the traffic")
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 0.5, "v2": 0.5}
    traffic = Traffic(ctrl)
    traffic.send("v2", 500)
    assert tick(ctrl, wall, 60)["state"] == "paused"  # a paused rollout is not judged
    rollout = run(ctrl.resume_rollout("ep"))
    assert rollout["state"] == "running"
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == pytest.approx({"v1": 0.9, "v2": 0.1})
    rollout = run(ctrl.abort_rollout("ep"))
    assert rollout["state"] == "aborted" and run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 1.0}


def test_shadow_phase_with_disagreeing_answers_never_sends_live_traffic(setup):
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.5, 1.0], 10, dict(GUARDS, min_shadow_agreement=0.99), shadow_s=20))
    eps = run(ctrl.list_endpoints())["ep"]
    assert eps["traffic"] == {"v1": 1.0} and eps["shadows"] == {"v2": 1.0}
    traffic = Traffic(ctrl)
    traffic.shadow("v2", compared=80, agreed=40)
    rollout = tick(ctrl, wall, 1)
    assert rollout["state"] == "rolled_back" and "shadow agreement 0.5" in rollout["reason"]
    eps = run(ctrl.list_endpoints())["ep"]
    assert eps["traffic"] == {"v1": 1.0} and eps["shadows"] == {}


def test_a_store_outage_during_a_step_neither_advances_nor_loses_the_rollout(setup, monkeypatch):
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    traffic = Traffic(ctrl)
    traffic.send("v1", 500)
    traffic.send("v2", 100)
    original = ctrl._store.store.transact

    def down(*_a, **_k):
        raise KVStoreUnavailableError("memory://x", "transact", "connection refused")

    monkeypatch.setattr(ctrl._store.store, "transact", down)
    for _ in range(3):
        assert tick(ctrl, wall, 20)["step"] == 0
    monkeypatch.setattr(ctrl._store.store, "transact", original)
    assert tick(ctrl, wall, 0)["step"] == 1


def test_a_restarted_controller_resumes_at_the_step_without_old_figures(setup):
    ctrl, wall, make = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 0.5, 1.0], 10, GUARDS))
    traffic = Traffic(ctrl)
    traffic.send("v1", 500)
    traffic.send("v2", 100)
    assert tick(ctrl, wall, 20)["step"] == 1
    traffic.send("v2", 100)
    successor = make()
    traffic.ctrl = successor
    rollout = tick(successor, wall, 20)
    assert rollout["step"] == 1, "a restart must never skip a step"
    assert rollout["history"][-1]["decision"].startswith("controller restarted")
    traffic.report()  # the same figures again: the successor counts from here
    rollout = tick(successor, wall, 20)
    assert rollout["step"] == 1 and rollout["readings"]["canary_requests"] == 0
    traffic.send("v1", 500)
    traffic.send("v2", 100)
    assert tick(successor, wall, 20)["step"] == 2


def test_deleting_the_canary_aborts_the_rollout(setup):
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    run(ctrl.delete_backend("v2"))
    rollout = run(ctrl.get_rollout("ep"))
    assert rollout["state"] == "aborted" and "was deleted" in rollout["reason"]
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 1.0}


def test_bad_arguments_and_one_rollout_per_endpoint(setup):
    ctrl, _, _ = setup
    with pytest.raises(InvalidConfigError, match="not increasing"):
        run(ctrl.start_rollout("ep", "v2", [0.5, 0.1], 10, GUARDS))
    with pytest.raises(Exception, match="canary backend 'nope' does not exist"):
        run(ctrl.start_rollout("ep", "nope", [0.5, 1.0], 10, GUARDS))
    with pytest.raises(InvalidConfigError, match="unknown rollout guard"):
        run(ctrl.start_rollout("ep", "v2", [0.5, 1.0], 10, {"max_errors": 1}))
    assert run(ctrl.list_endpoints())["ep"]["rollout"] is None  # nothing changed
    run(ctrl.start_rollout("ep", "v2", [0.5, 1.0], 10, GUARDS))
    with pytest.raises(DuplicateError, match="one rollout per endpoint"):
        run(ctrl.start_rollout("ep", "v2", [0.5, 1.0], 10, GUARDS))


def test_a_new_rollout_never_shows_the_last_ones_verdict(setup):
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    traffic = Traffic(ctrl)
    traffic.send("v2", 30)
    assert "30 of min_requests" in tick(ctrl, wall, 1)["reason"]
    run(ctrl.abort_rollout("ep"))
    rollout = run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    assert "readings" not in rollout and "30 of" not in rollout["reason"]


def test_deleting_the_canary_never_overrides_an_operators_manual_traffic(setup):
    """Found by the simulator (seed 162): after the operator set traffic by hand, deleting
    the canary aborted the rollout and restored its source over the operator's traffic."""
    ctrl, wall, _ = setup
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    run(ctrl.set_traffic("ep", {"v1": 0.3, "v2": 0.7}))
    with pytest.raises(Exception, match="still used by endpoint"):
        run(ctrl.delete_backend("v2"))
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 0.3, "v2": 0.7}
    assert run(ctrl.get_rollout("ep"))["state"] == "paused"
