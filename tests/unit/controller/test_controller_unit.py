"""The controller's RPC handlers and control step with a memory store and fake replicas.

Each defect of the control-plane issue has a test here that failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from serveplane.backend_state import ReplicaState
from serveplane.backend_state.fake import FakeActorDirectory, FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.controller.persistence import inline_runner
from serveplane.exceptions import (
    GoalNotFoundError,
    InUseError,
    KVStoreUnavailableError,
    StaleEpochError,
)
from serveplane.kv_store import MemoryKVStore, RecordStore, open_store
from serveplane.records import keys
from tests.conftest import TEST_KEY


class WriteAheadChecker(FakeReplicaActorWrapper):
    """Asserts, when started, that its own name is already in the stored checkpoint."""

    store_url = ""

    def start(self, spec):
        records = RecordStore(open_store(self.store_url), namespace="serveplane/unit", key=TEST_KEY).read_all()
        assert self.replica_tag in records[f"backend/{self.backend}"]["replica_tags"], \
            "replica started before its name was checkpointed"
        super().start(spec)
        self.set_ready()


def make_controller(url: str, factory=None, **kwargs) -> ServeController:
    ctrl = ServeController(url, "unit", wrapper_factory=factory or (lambda b, t: WriteAheadChecker(b, t)),
                           run_loop=False, run_io=inline_runner, run_ray=inline_runner,
                           actors=FakeActorDirectory(), **kwargs, state_key=TEST_KEY)
    return ctrl


@pytest.fixture
def controller():
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    FakeReplicaActorWrapper.start_error = None
    url = f"memory://{uuid.uuid4().hex}"
    WriteAheadChecker.store_url = url
    return make_controller(url), url


LOOP = asyncio.new_event_loop()


def run(coro):
    return LOOP.run_until_complete(coro)


def step(ctrl: ServeController, now: float):
    return run(ctrl.control_step(now))


def step_until_done(ctrl, goal, steps=40, start=0.0):
    for i in range(steps):
        step(ctrl, start + float(i))
        if goal not in ctrl._goals.pending():
            return
    raise AssertionError("goal did not complete")


def wait(ctrl, goal):
    return run(ctrl.wait_for_goal(goal, 0.01))


def test_create_backend_checkpoints_names_before_starting(controller):
    ctrl, _ = controller
    goal = run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 3}))
    assert goal in ctrl._goals.pending()
    step_until_done(ctrl, goal)
    started = [w for w in FakeReplicaActorWrapper.registry.values() if w.started]
    assert len(started) == 3
    assert wait(ctrl, goal) == {"done": True, "error": None}


def test_restart_recovers_state_and_replicas(controller):
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 2})))
    run(ctrl.create_endpoint("ep", "m", "/ep", ["GET"]))
    names_before = {w.actor_name for w in FakeReplicaActorWrapper.registry.values() if w.started}
    successor = make_controller(url)
    assert successor._epoch == ctrl._epoch + 1
    assert run(successor.list_endpoints())["ep"]["route"] == "/ep"
    step(successor, 0.0)
    recovered = {r.wrapper.actor_name for s in successor._backends for r in s.replicas}
    assert recovered == names_before  # found again, not re-created


def test_restart_keeps_recovering_replicas_published(controller):
    """Defect 2: recovery published an empty replica set while readiness probes ran."""
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 2})))
    for w in FakeReplicaActorWrapper.registry.values():
        w._ready = __import__("serveplane.backend_state", fromlist=["ProbeStatus"]).ProbeStatus.PENDING
    successor = make_controller(url)  # every probe hangs: replicas stay RECOVERING
    published = successor._long_poll.get(keys.replicas("m")).value
    assert len(published) == 2
    for t in range(5):
        step(successor, float(t))
        assert len(successor._long_poll.get(keys.replicas("m")).value) == 2


def test_failed_write_leaves_memory_and_store_unchanged(controller, monkeypatch):
    """Defect 3: a refused change kept the new code under the old version."""
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, None)))
    run(ctrl.create_endpoint("ep", "m", None, None))
    before_eps = run(ctrl.list_endpoints())
    before_record = ctrl._backends.get("m").record
    before_keys = ctrl._store.store.list("")

    def down(*_a, **_k):
        raise KVStoreUnavailableError("memory://x", "transact", "connection refused")

    monkeypatch.setattr(ctrl._store.store, "transact", down)
    with pytest.raises(KVStoreUnavailableError, match="unavailable"):
        run(ctrl.shadow_traffic("ep", "m", 0.5))
    with pytest.raises(KVStoreUnavailableError):
        run(ctrl.update_backend("m", b"new code", None, None, {"num_replicas": 3}))
    assert run(ctrl.list_endpoints()) == before_eps
    assert ctrl._backends.get("m").record == before_record
    assert ctrl._persistence.refs.referenced() == set(before_record.blob_hashes())
    assert not ctrl._goals.pending()
    monkeypatch.undo()
    assert ctrl._store.store.list("") == before_keys


def test_one_change_is_one_store_transaction(controller, monkeypatch):
    """Defect 3: a change was written one key at a time."""
    ctrl, _ = controller
    for i in range(5):
        step_until_done(ctrl, run(ctrl.create_backend(f"b{i}", b"code", b"init", {}, None)))
        run(ctrl.create_endpoint(f"ep{i}", f"b{i}", None, None))
    calls = []
    original = ctrl._store.store.transact

    def spy(checks, writes):
        calls.append(sorted(k.split("/records/")[-1] for k in writes if "/records/" in k
                            and not k.endswith(".backup")))
        return original(checks, writes)

    monkeypatch.setattr(ctrl._store.store, "transact", spy)
    run(ctrl.set_traffic("ep3", {"b3": 0.5, "b4": 0.5}))
    assert calls == [["endpoint/ep3"]]
    calls.clear()
    goal = run(ctrl.update_backend("b2", b"code v2", None, None, {"num_replicas": 2}))
    assert calls == [sorted(["backend/b2", f"goal/{goal}"])]


def test_start_that_raises_fails_the_goal_within_seconds(controller):
    """Defect 1: a start Ray refuses left replicas STARTING and the goal waited 120 s."""
    ctrl, _ = controller
    FakeReplicaActorWrapper.start_error = ValueError(
        "Resource 'GPU' is not a valid custom resource; use num_gpus instead")
    goal = run(ctrl.create_backend("gpu", b"code", b"init", {}, None))
    now = 0.0
    while goal in ctrl._goals.pending() and now < 60:
        step(ctrl, now)
        now += 0.1
    outcome = wait(ctrl, goal)
    assert outcome["done"] and "use num_gpus instead" in outcome["error"]
    assert now < 5.0, f"the goal took {now:.1f}s of control time to fail"
    assert "could not be started" in run(ctrl.get_status())["backends"]["gpu"]["failure"]


def test_store_outage_mid_tick_neither_wedges_nor_skips_decided_actions(controller, monkeypatch):
    """Defect 1: a KV failure in a tick skipped its actions and left replicas STARTING."""
    ctrl, _ = controller
    FakeReplicaActorWrapper.registry.clear()
    ctrl._backends._factory = lambda b, t: FakeReplicaActorWrapper(b, t)
    goal = run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 2}))
    step(ctrl, 0.0)
    for w in FakeReplicaActorWrapper.registry.values():
        w.set_ready()
    step(ctrl, 0.1)
    step(ctrl, 0.2)
    assert goal not in ctrl._goals.pending()
    victim = next(iter(FakeReplicaActorWrapper.registry.values()))
    victim.set_dead()
    victim.probe_now()
    ctrl._backends.mark_active("m")
    original = ctrl._store.store.transact

    def down(*_a, **_k):
        raise KVStoreUnavailableError("memory://x", "transact", "connection refused")

    monkeypatch.setattr(ctrl._store.store, "transact", down)
    report = step(ctrl, 1.0)   # sends the probe
    report = step(ctrl, 1.1)   # sees it dead: stop decided, store down
    assert report.write_error is None or "unavailable" in report.write_error
    step(ctrl, 1.2)
    assert victim.killed, "a stop decided while the store is down must still happen"
    assert not [r for r in ctrl._backends.get("m").replicas.get(ReplicaState.STARTING)], \
        "no replica may start before its name is stored"
    monkeypatch.setattr(ctrl._store.store, "transact", original)
    goal = run(ctrl.update_backend_config("m", {"num_replicas": 3}))
    for t in range(20):
        step(ctrl, 2.0 + t * 0.1)
        for w in FakeReplicaActorWrapper.registry.values():
            if w.started:
                w.set_ready()
    assert wait(ctrl, goal) == {"done": True, "error": None}
    stored = ctrl._store.read_all()["backend/m"]["replica_tags"]
    assert sorted(stored) == sorted(r.tag for r in ctrl._backends.get("m").replicas)


def test_retry_after_restart_returns_the_original_pending_goal(controller):
    """Defect 4: a retried update after a controller crash returned at once with no goal."""
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, None)))
    ctrl._backends._factory = lambda b, t: FakeReplicaActorWrapper(b, t)  # never ready
    goal = run(ctrl.update_backend_config("m", {"num_replicas": 2}))
    assert run(ctrl.update_backend_config("m", {"num_replicas": 2})) == goal  # retry, same controller
    successor = make_controller(url, factory=lambda b, t: FakeReplicaActorWrapper(b, t))
    assert run(successor.update_backend_config("m", {"num_replicas": 2})) == goal
    assert run(successor.wait_for_goal(goal, 0.01)) == {"done": False, "error": None}


def test_unknown_goal_id_is_an_error(controller):
    """Defect 4: an unknown goal id read as success."""
    ctrl, _ = controller
    with pytest.raises(GoalNotFoundError, match="is unknown"):
        wait(ctrl, "no-such-goal")


def test_finished_goal_outcome_survives_a_restart(controller):
    ctrl, url = controller
    goal = run(ctrl.create_backend("m", b"code", b"init", {}, None))
    step_until_done(ctrl, goal)
    successor = make_controller(url)
    assert run(successor.wait_for_goal(goal, 0.01)) == {"done": True, "error": None}


def test_deleting_a_backend_fails_its_other_pending_goals(controller):
    """Defect 4: delete completed the backend's other pending goals as successes."""
    ctrl, _ = controller
    ctrl._backends._factory = lambda b, t: FakeReplicaActorWrapper(b, t)  # never ready
    create = run(ctrl.create_backend("m", b"code", b"init", {}, None))
    delete = run(ctrl.delete_backend("m", force=True))
    outcome = wait(ctrl, create)
    assert outcome["done"] and "was deleted before this change completed" in outcome["error"]
    step_until_done(ctrl, delete)
    assert wait(ctrl, delete) == {"done": True, "error": None}


def test_config_goal_completes_only_when_replicas_run_the_new_value(controller):
    """Defect 5: max_batch_size changes completed their goal without reaching replicas."""
    ctrl, _ = controller
    ctrl._backends._factory = lambda b, t: FakeReplicaActorWrapper(b, t)
    goal = run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 2}))
    step(ctrl, 0.0)
    for w in FakeReplicaActorWrapper.registry.values():
        w.set_ready()
    step_until_done(ctrl, goal, start=0.1)
    goal = run(ctrl.update_backend_config("m", {"max_batch_size": 6}))
    for t in range(5):
        step(ctrl, 10.0 + t)
    assert goal in ctrl._goals.pending(), "completed before any replica applied max_batch_size"
    requests = [w for w in FakeReplicaActorWrapper.registry.values() if w.reconfigure_requests]
    assert len(requests) == 2
    for w in requests:
        w.set_reconfigured()
    step_until_done(ctrl, goal, start=20.0)


def test_zombie_controller_never_acts(controller):
    """Defect 7: a stale controller with nothing to write kept health-checking and killing."""
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 2})))
    successor = make_controller(url)
    step(successor, 0.0)
    zombie_wrappers = [r.wrapper for r in ctrl._backends.get("m").replicas]
    victim = zombie_wrappers[0]
    victim.set_unhealthy()
    victim.probe_now()
    ctrl._backends.mark_active("m")
    with pytest.raises(StaleEpochError):
        for t in range(5):
            step(ctrl, 100.0 + t)  # probe, see unhealthy, decide a stop: fenced
    assert not any(w.killed or w.stop_requested for w in zombie_wrappers)
    with pytest.raises(StaleEpochError):
        step(ctrl, 200.0)  # and it stays stopped
    assert run(ctrl._sweep_orphans()) == 0


def test_idle_zombie_stops_probing_within_a_second(controller):
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, None)))
    zombie_wrappers = [r.wrapper for r in ctrl._backends.get("m").replicas]
    make_controller(url)
    sent = sum(w.health_checks_sent for w in zombie_wrappers)
    with pytest.raises(StaleEpochError):
        for t in range(100):
            step(ctrl, 1000.0 + t * 0.1)
    assert sum(w.health_checks_sent for w in zombie_wrappers) == sent
    assert run(ctrl._sweep_orphans()) == 0


def test_garbage_is_collected_and_recovery_is_flat(controller):
    """Defect 8: tombstones, backups and blobs were never collected."""
    ctrl, url = controller
    for i in range(200):
        code = f"code {i}".encode()
        tag = f"b{i % 3}"
        if ctrl._backends.exists(tag):
            goal = run(ctrl.update_backend(tag, code, None, None, None))
        else:
            goal = run(ctrl.create_backend(tag, code, b"init", {}, None))
        step_until_done(ctrl, goal, start=i * 100.0)
        if i % 3 == 2:
            run(ctrl.create_endpoint(f"tmp{i}", "b0", None, None))
            run(ctrl.delete_endpoint(f"tmp{i}"))
    keys_now = ctrl._store.store.list("serveplane/unit/")
    blobs = [k for k in keys_now if "/blob/" in k]
    assert len(blobs) == 4, blobs  # three live code blobs and one init blob
    assert not [k for k in keys_now if "/endpoint/tmp" in k], "deleted endpoints leave nothing"
    records = [k for k in keys_now if "/records/" in k and not k.endswith(".backup")]
    assert len(records) <= 3 + 200, "finished goals are bounded, live records only otherwise"
    assert len(ctrl._persistence._cache) <= 6 or ctrl._persistence._cache_bytes < 10_000


def test_store_io_runs_off_the_event_loop():
    """Defect 9: KV writes ran on the controller's event loop."""
    FakeReplicaActorWrapper.registry.clear()
    url = f"memory://{uuid.uuid4().hex}"
    ctrl = ServeController(url, "unit", wrapper_factory=lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True),
                           run_loop=False, actors=FakeActorDirectory(), state_key=TEST_KEY)
    threads = []
    original = ctrl._store.write

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    ctrl._store.write = spy  # type: ignore[method-assign]

    async def scenario():
        await ctrl.create_backend("m", b"code", b"init", {}, None)
        await ctrl.control_step(time.monotonic())
        return threading.current_thread()

    loop_thread = asyncio.new_event_loop().run_until_complete(scenario())
    assert threads and all(t is not loop_thread for t in threads)


def test_delete_backend_in_use_is_refused(controller):
    ctrl, _ = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, None)))
    run(ctrl.create_endpoint("ep", "m", None, None))
    with pytest.raises(InUseError, match="still used by endpoint"):
        run(ctrl.delete_backend("m"))


def test_tick_visits_only_backends_that_need_it(controller):
    ctrl, _ = controller
    ctrl._backends._factory = lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True)
    for i in range(50):
        run(ctrl.create_backend(f"b{i}", b"code", b"init", {}, None))
    for t in range(5):
        step(ctrl, float(t) * 0.1)
    assert step(ctrl, 1.0).visited == 0  # converged, health checks not due
    run(ctrl.update_backend_config("b7", {"num_replicas": 2}))
    assert step(ctrl, 1.1).visited == 1
    assert step(ctrl, 10.5).visited == 50  # everybody's health check is due


def test_memory_store_fixture_is_isolated():
    assert MemoryKVStore().list("") == []
