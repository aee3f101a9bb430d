"""Rollouts through the real controller on one fake clock (no Ray, no sleeps): requests
that never answered reach the guards, a step without progress breaches, a canary that
never becomes ready breaches, and router reports stay bounded."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from serveplane.backend_state.fake import FakeActorDirectory, FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.controller.persistence import inline_runner
from serveplane.controller.router_reports import ROUTER_REPORT_FRESH_S
from serveplane.rollout.histogram import N_BUCKETS, bucket_of
from tests.conftest import TEST_KEY

LOOP = asyncio.new_event_loop()


def run(coro):
    return LOOP.run_until_complete(coro)


class FakeClock:
    """One clock for the whole controller: monotonic and wall time move together."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


class Router:
    """One router's cumulative outcomes per backend, reported as routers do."""

    def __init__(self, ctrl: ServeController, clock: FakeClock, new_counters: bool = True) -> None:
        self.ctrl, self.started_at, self.new_counters = ctrl, clock.time(), new_counters
        self.router_id = uuid.uuid4().hex
        self.backends: dict[str, dict] = {}

    def send(self, backend: str, answered: int = 0, **unanswered: int) -> None:
        b = self.backends.setdefault(backend, {"requests": 0, "app_errors": 0, "replica_failures": 0,
                                               "latency": [0] * N_BUCKETS, "latency_sum_s": 0.0})
        b["requests"] += answered
        b["latency"][bucket_of(0.01)] += answered
        for key, n in unanswered.items():
            b[key] = b.get(key, 0) + n
        self.report()

    def report(self) -> None:
        backends = {k: dict(v, latency=list(v["latency"])) for k, v in self.backends.items()}
        if not self.new_counters:
            backends = {k: {f: v[f] for f in ("requests", "app_errors", "replica_failures", "latency")}
                        for k, v in backends.items()}
        stats = {"endpoint": "ep", "started_at": self.started_at, "backends": backends, "shadows": {}}
        run(self.ctrl.record_handle_metrics(self.router_id, {}, stats))


def make(canary_ready: bool = True, canary_start_error: BaseException | None = None):
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    clock = FakeClock()

    def wrapper(backend: str, tag: str) -> FakeReplicaActorWrapper:
        replica = FakeReplicaActorWrapper(backend, tag, auto_ready=canary_ready or backend != "v2")
        if backend == "v2" and canary_start_error is not None:
            replica.start_error = canary_start_error
        return replica

    ctrl = ServeController(
        f"memory://{uuid.uuid4().hex}", "unit",
        wrapper_factory=wrapper,
        run_loop=False, run_io=inline_runner, run_ray=inline_runner, actors=FakeActorDirectory(),
        clock=clock, state_key=TEST_KEY)
    for tag in ("v1", "v2"):
        run(ctrl.create_backend(tag, f"code {tag}".encode(), b"init", {}, None))
    run(ctrl.create_endpoint("ep", "v1", "/ep", ["GET"]))
    for _ in range(3):
        tick(ctrl, clock, 0.1)
    return ctrl, clock


def tick(ctrl, clock, seconds=0.0):
    clock.now += seconds
    run(ctrl.control_step(clock.monotonic()))


def rollout(ctrl):
    return run(ctrl.get_rollout("ep"))


GUARDS = {"max_error_rate": 0.05, "min_requests": 50}


def test_a_canary_whose_requests_all_time_out_is_rolled_back_naming_timeouts():
    ctrl, clock = make()
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 300, GUARDS))
    router = Router(ctrl, clock)
    router.send("v1", answered=500)
    router.send("v2", timed_out=30)
    tick(ctrl, clock, 1)
    r = rollout(ctrl)
    assert r["state"] == "rolled_back", r["reason"]
    assert r["reason"] == "canary error rate 1 > max_error_rate 0.05 over 30 requests (30 timed out)"
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 1.0}
    readings = r["history"][-1]["readings"]
    assert readings["canary_timed_out"] == 30 and readings["canary_requests"] == 0
    assert dict(ctrl.rollbacks) == {("ep", "max_error_rate"): 1}  # one label per guard, not per figure


def test_expiries_and_refusals_count_cancels_do_not():
    ctrl, clock = make()
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    router = Router(ctrl, clock)
    router.send("v2", answered=60, cancelled=200)
    tick(ctrl, clock, 1)
    r = rollout(ctrl)
    assert r["state"] == "running" and r["readings"]["canary_cancelled"] == 200
    assert r["readings"]["error_rate"] == 0
    router.send("v2", expired=20, refused=20)
    tick(ctrl, clock, 1)
    r = rollout(ctrl)
    assert r["state"] == "rolled_back"
    assert "20 expired before they ran" in r["reason"] and "20 refused by back-pressure" in r["reason"]


def test_a_router_without_the_new_counters_still_drives_the_rollout():
    ctrl, clock = make()
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))
    router = Router(ctrl, clock, new_counters=False)
    router.send("v1", answered=500)
    router.send("v2", answered=60)
    tick(ctrl, clock, 1)
    tick(ctrl, clock, 10)  # the router is idle now: what it counted in the step stays counted
    assert rollout(ctrl)["step"] == 1


def test_a_step_without_enough_requests_breaches_at_its_progress_deadline():
    ctrl, clock = make()
    run(ctrl.start_rollout("ep", "v2", [0.1, 0.5, 1.0], 10, dict(GUARDS, progress_deadline_s=120)))
    router = Router(ctrl, clock)
    router.send("v2", answered=60)
    tick(ctrl, clock, 1)
    tick(ctrl, clock, 10)
    assert rollout(ctrl)["step"] == 1
    router.send("v2", answered=3, timed_out=1)
    tick(ctrl, clock, 1)
    tick(ctrl, clock, 118)
    assert rollout(ctrl)["state"] == "running", "the deadline has not passed"
    tick(ctrl, clock, 2)
    r = rollout(ctrl)
    assert r["state"] == "rolled_back"
    assert r["reason"] == ("step 1 reached 3 of min_requests 50 in 121 s (progress_deadline_s 120); "
                           "1 timed out")
    assert dict(ctrl.rollbacks) == {("ep", "progress_deadline_s"): 1}


def test_a_hung_canary_without_an_error_guard_ends_at_the_default_deadline():
    ctrl, clock = make()
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, {"min_requests": 50}))
    router = Router(ctrl, clock)
    for _ in range(59):
        router.send("v2", timed_out=10)
        tick(ctrl, clock, 10)
    assert rollout(ctrl)["state"] == "running"
    tick(ctrl, clock, 11)
    r = rollout(ctrl)
    assert r["state"] == "rolled_back"
    assert r["reason"].startswith("step 0 reached 0 of min_requests 50 in 601 s (progress_deadline_s 600)")
    assert "590 timed out" in r["reason"]


def test_a_canary_that_never_becomes_ready_breaches_with_its_own_reason():
    ctrl, clock = make(canary_ready=False)
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, dict(GUARDS, progress_deadline_s=60)))
    router = Router(ctrl, clock)
    for _ in range(5):
        router.send("v1", answered=100)
        tick(ctrl, clock, 10)
    assert rollout(ctrl)["state"] == "running"
    tick(ctrl, clock, 10)
    r = rollout(ctrl)
    assert r["state"] == "rolled_back"
    assert r["reason"].startswith("step 0: the canary never became ready in 60 s (progress_deadline_s 60): "
                                  "backend 'v2' has no serving replica of 1 wanted")
    assert dict(ctrl.rollbacks) == {("ep", "canary never ready"): 1}


def test_a_canary_that_cannot_start_breaches_at_once_without_waiting_for_the_deadline():
    ctrl, clock = make(canary_start_error=RuntimeError("ModuleNotFoundError: no module named 'model_v2'"))
    run(ctrl.start_rollout("ep", "v2", [0.1, 1.0], 10, GUARDS))  # default deadline: 600 s
    for _ in range(30):
        tick(ctrl, clock, 1)
        if rollout(ctrl)["state"] != "running":
            break
    r = rollout(ctrl)
    assert r["state"] == "rolled_back", r["reason"]
    assert r["reason"].startswith("step 0: the canary cannot start: replica serveplane:v2#")
    assert "no module named 'model_v2'" in r["reason"]
    assert run(ctrl.list_endpoints())["ep"]["traffic"] == {"v1": 1.0}
    assert dict(ctrl.rollbacks) == {("ep", "canary cannot start"): 1}


def test_router_reports_in_the_controller_stay_bounded_and_stale_ones_drop():
    ctrl, clock = make()
    for i in range(5_000):
        run(ctrl.record_handle_metrics(f"router-{i}", {"v1": {"queued": 1.0, "in_flight": 0.0, "rate": 1.0}},
                                       {"endpoint": "ep", "backends": {}, "shadows": {}}))
        clock.now += 0.1
    assert len(ctrl._router_reports) <= ROUTER_REPORT_FRESH_S / 0.1 + 1
    assert ctrl._autoscaler.aggregate("v1")["queued"] == pytest.approx(len(ctrl._router_reports))
    clock.now += ROUTER_REPORT_FRESH_S + 1
    metrics = run(ctrl.get_metrics())
    assert metrics["requests"] == {} and len(ctrl._router_reports) == 0
