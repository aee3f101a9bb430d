"""The replica state machine, driven through the hand-written fake wrapper (no Ray)."""

from __future__ import annotations

import pytest

from serveplane.backend_state import BackendRecord, BackendState, ReplicaState
from serveplane.backend_state.fake import FakeReplicaActorWrapper
from serveplane.config import BackendConfig

S = ReplicaState


@pytest.fixture(autouse=True)
def _clean_registry():
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    yield


def make_state(num_replicas: int = 2, code: str = "c1", user_config=None, **cfg) -> BackendState:
    config = BackendConfig(num_replicas=num_replicas, user_config=user_config, **cfg)
    record = BackendRecord.make("b", code, "i1", {}, config)
    return BackendState(record, b"code", b"init",
                        lambda backend, tag: FakeReplicaActorWrapper(backend, tag))


def wrappers(state: BackendState, *states: ReplicaState) -> list[FakeReplicaActorWrapper]:
    return [r.wrapper for r in state.replicas.get(*states)]  # type: ignore[misc]


def run_actions(update, now: float = 0.0) -> None:
    for action in update.actions:
        action.run(now)


def test_scale_up_starts_replicas_and_converges_when_ready():
    state = make_state(3)
    update = state.update(0.0)
    assert [a.kind for a in update.actions] == ["start"] * 3
    assert update.names_changed and not update.converged
    run_actions(update)
    assert state.update(0.1).converged is False
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    update = state.update(0.2)
    assert update.converged and update.serving_changed
    assert len(state.serving_infos()) == 3


def test_scale_down_drains_then_kills():
    state = make_state(2)
    run_actions(state.update(0.0))
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    state.update(0.1)
    state.set_target(state.record.model_copy(update={"target_replicas": 1}))
    update = state.update(0.2)
    assert [a.kind for a in update.actions] == ["stop"]
    assert update.actions[0].graceful_timeout_s == state.record.config.graceful_shutdown_timeout_s
    run_actions(update, 0.2)
    stopping = wrappers(state, S.STOPPING)
    assert len(stopping) == 1 and stopping[0].stop_requested and not stopping[0].killed
    assert state.update(0.3).converged is False  # still draining
    stopping[0].set_drained()
    assert state.update(0.4).converged
    assert stopping[0].killed


def test_user_config_change_reconfigures_in_place():
    state = make_state(2, user_config={"t": 1})
    run_actions(state.update(0.0))
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    state.update(0.1)
    before = {r.tag for r in state.replicas}
    new_cfg = state.record.config.model_copy(update={"user_config": {"t": 2}})
    state.set_target(BackendRecord.make("b", "c1", "i1", {}, new_cfg))
    update = state.update(0.2)
    assert sorted(a.kind for a in update.actions) == ["reconfigure", "reconfigure"]
    run_actions(update)
    assert {r.tag for r in state.replicas} == before  # nobody replaced
    assert not state.update(0.3).converged
    for w in wrappers(state, S.UPDATING):
        assert w.reconfigure_requests == [{"t": 2}]
        w.set_reconfigured()
    assert state.update(0.4).converged


def test_code_change_rolls_without_dropping_below_target():
    state = make_state(3)
    run_actions(state.update(0.0))
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    state.update(0.1)
    old_version = state.record.version
    state.set_target(BackendRecord.make("b", "c2", "i1", {}, state.record.config))
    now = 1.0
    for _ in range(30):
        update = state.update(now)
        run_actions(update, now)
        serving = state.replicas.count(S.RUNNING, S.UPDATING)
        assert serving >= 3, f"capacity dropped to {serving}"
        assert len(state.replicas.get(S.STARTING)) <= 1, "surge must be one replica"
        for w in wrappers(state, S.STARTING):
            w.set_ready()
        for w in wrappers(state, S.STOPPING):
            w.set_drained()
        now += 0.1
        if update.converged:
            break
    assert update.converged
    assert all(r.version != old_version for r in state.replicas)


def test_repeated_start_failure_is_reported_with_the_error():
    state = make_state(1)
    now = 0.0
    failure = None
    for _ in range(200):
        update = state.update(now)
        run_actions(update, now)
        for w in wrappers(state, S.STARTING):
            w.set_failed("ValueError: bad weights path '/nope'")
        failure = update.failure
        if failure:
            break
        now += 1.0
    assert failure is not None and "bad weights path" in failure and "failed to start" in failure


def test_dead_replica_is_replaced():
    state = make_state(2)
    run_actions(state.update(0.0))
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    state.update(0.1)
    victim = wrappers(state, S.RUNNING)[0]
    victim.set_dead()
    update = state.update(0.2)
    assert update.serving_changed
    assert [a.kind for a in update.actions] == ["stop", "start"]
    assert len(state.serving_infos()) == 1


def test_recover_keeps_existing_actors_and_drops_missing_ones():
    state = make_state(2)
    run_actions(state.update(0.0))
    tags = state.record.replica_tags
    assert len(tags) == 2
    gone = f"serveplane:b#{tags[0]}"
    FakeReplicaActorWrapper.existing_actors.discard(gone)
    fresh = make_state(2)
    fresh.recover(tags)
    assert len(fresh.replicas.get(S.RECOVERING)) == 1
    update = fresh.update(0.0)
    assert [a.kind for a in update.actions] == ["start"]  # replaces the missing one


def test_deleting_converges_when_all_replicas_are_gone():
    state = make_state(2, graceful_shutdown_timeout_s=0.0)
    run_actions(state.update(0.0))
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    state.update(0.1)
    state.mark_deleting()
    run_actions(state.update(0.2), 0.2)
    assert state.update(0.3).converged
    assert len(state.replicas) == 0


def test_container_summary_and_repr():
    state = make_state(1)
    run_actions(state.update(0.0))
    assert state.replicas.summary() == {"STARTING": 1}
    assert "STARTING" in repr(next(iter(state.replicas)))
