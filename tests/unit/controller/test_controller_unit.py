"""The controller's RPC handlers and control step with a memory store and fake replicas."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from serveplane.backend_state.fake import FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.exceptions import InUseError, KVStoreUnavailableError
from serveplane.kv_store import RecordStore, open_store


class WriteAheadChecker(FakeReplicaActorWrapper):
    """Asserts, when started, that its own name is already in the stored checkpoint."""

    store_url = ""

    def start(self, spec):
        records = RecordStore(open_store(self.store_url), namespace="serveplane/unit").read_all()
        assert self.replica_tag in records[f"backend/{self.backend}"]["replica_tags"], \
            "replica started before its name was checkpointed"
        super().start(spec)
        self.set_ready()


@pytest.fixture
def controller():
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    url = f"memory://{uuid.uuid4().hex}"
    WriteAheadChecker.store_url = url
    ctrl = ServeController(url, "unit", wrapper_factory=lambda b, t: WriteAheadChecker(b, t),
                           run_loop=False)
    ctrl._sweep_orphans = lambda: None  # no Ray here
    return ctrl, url


def run(coro):
    return asyncio.get_event_loop_policy().new_event_loop().run_until_complete(coro)


def step_until_done(ctrl, goal, steps=20):
    for i in range(steps):
        ctrl.control_step(float(i))
        if goal not in ctrl._goals.to_checkpoint():
            return
    raise AssertionError("goal did not complete")


def test_create_backend_checkpoints_names_before_starting(controller):
    ctrl, _ = controller
    goal = run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 3}))
    assert goal in ctrl._goals.to_checkpoint()
    step_until_done(ctrl, goal)
    started = [w for w in FakeReplicaActorWrapper.registry.values() if w.started]
    assert len(started) == 3


def test_restart_recovers_state_and_replicas(controller):
    ctrl, url = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, {"num_replicas": 2})))
    run(ctrl.create_endpoint("ep", "m", "/ep", ["GET"]))
    names_before = {w.actor_name for w in FakeReplicaActorWrapper.registry.values() if w.started}
    successor = ServeController(url, "unit", wrapper_factory=lambda b, t: WriteAheadChecker(b, t),
                           run_loop=False)
    successor._sweep_orphans = lambda: None
    assert successor._epoch == ctrl._epoch + 1
    assert run(successor.list_endpoints())["ep"]["route"] == "/ep"
    for name in names_before:
        FakeReplicaActorWrapper.registry[name].set_ready()
    successor.control_step(0.0)
    recovered = {r.wrapper.actor_name for s in successor._backends for r in s.replicas}
    assert recovered == names_before  # found again, not re-created


def test_failed_checkpoint_write_leaves_state_unchanged(controller, monkeypatch):
    ctrl, _ = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, None)))
    run(ctrl.create_endpoint("ep", "m", None, None))
    before = run(ctrl.list_endpoints())

    def down(*_a, **_k):
        raise KVStoreUnavailableError("memory://x", "put 'checkpoint'", "connection refused")

    monkeypatch.setattr(ctrl._store, "write", down)
    with pytest.raises(KVStoreUnavailableError, match="unavailable"):
        run(ctrl.shadow_traffic("ep", "m", 0.5))
    assert run(ctrl.list_endpoints()) == before


def test_delete_backend_in_use_is_refused(controller):
    ctrl, _ = controller
    step_until_done(ctrl, run(ctrl.create_backend("m", b"code", b"init", {}, None)))
    run(ctrl.create_endpoint("ep", "m", None, None))
    with pytest.raises(InUseError, match="still used by endpoint"):
        run(ctrl.delete_backend("m"))


def test_a_change_writes_only_its_own_records(controller, monkeypatch):
    ctrl, _ = controller
    for i in range(5):
        step_until_done(ctrl, run(ctrl.create_backend(f"b{i}", b"code", b"init", {}, None)))
        run(ctrl.create_endpoint(f"ep{i}", f"b{i}", None, None))
    written = []
    original = ctrl._store.write

    def spy(epoch, records):
        written.append(sorted(records))
        return original(epoch, records)

    monkeypatch.setattr(ctrl._store, "write", spy)
    run(ctrl.set_traffic("ep3", {"b3": 0.5, "b4": 0.5}))
    assert written == [["endpoint/ep3"]]
    written.clear()
    goal = run(ctrl.update_backend_config("b2", {"num_replicas": 2}))
    assert written == [sorted(["backend/b2", f"goal/{goal}"])]
