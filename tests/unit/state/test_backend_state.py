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
    return BackendState(record, lambda backend, tag: FakeReplicaActorWrapper(backend, tag))


def wrappers(state: BackendState, *states: ReplicaState) -> list[FakeReplicaActorWrapper]:
    return [r.wrapper for r in state.replicas.get(*states)]  # type: ignore[misc]


def run_actions(update, now: float = 0.0, state: BackendState | None = None) -> None:
    """What the control loop does after a successful write: commit, then act."""
    if state is not None:
        state.commit(update)
    for action in update.actions:
        try:
            action.run(now)
        except Exception as exc:  # noqa: BLE001 - fed back like the reconciler does
            assert state is not None
            state.action_failed(action, exc, now)
        else:
            if state is not None:
                state.action_done(action)


def tick(state: BackendState, now: float):
    update = state.update(now)
    run_actions(update, now, state)
    if update.serving_changed:
        state.publish()
    return update


def test_scale_up_starts_replicas_and_converges_when_ready():
    state = make_state(3)
    update = state.update(0.0)
    assert [a.kind for a in update.actions] == ["start"] * 3
    assert update.names_changed and not update.converged
    run_actions(update, 0.0, state)
    assert state.update(0.1).converged is False
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    update = state.update(0.2)
    assert update.converged and update.serving_changed
    assert len(state.serving_infos()) == 3


def test_scale_down_drains_then_kills():
    state = make_state(2)
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)
    state.set_target(state.record.model_copy(update={"target_replicas": 1}))
    update = state.update(0.2)
    assert [a.kind for a in update.actions] == ["stop"]
    assert update.actions[0].graceful_timeout_s == state.record.config.graceful_shutdown_timeout_s
    run_actions(update, 0.2, state)
    stopping = wrappers(state, S.STOPPING)
    assert len(stopping) == 1 and stopping[0].stop_requested and not stopping[0].killed
    assert state.update(0.3).converged is False  # still draining
    stopping[0].set_drained()
    update = state.update(0.4)
    assert [a.kind for a in update.actions] == ["kill"] and not stopping[0].killed  # decided, not done
    run_actions(update, 0.4, state)
    assert stopping[0].killed
    assert state.update(0.5).converged


def test_user_config_change_reconfigures_in_place():
    state = make_state(2, user_config={"t": 1})
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)
    before = {r.tag for r in state.replicas}
    new_cfg = state.record.config.model_copy(update={"user_config": {"t": 2}})
    state.set_target(BackendRecord.make("b", "c1", "i1", {}, new_cfg))
    update = state.update(0.2)
    assert sorted(a.kind for a in update.actions) == ["reconfigure", "reconfigure"]
    run_actions(update, 0.0, state)
    assert {r.tag for r in state.replicas} == before  # nobody replaced
    assert not state.update(0.3).converged
    for w in wrappers(state, S.UPDATING):
        assert w.reconfigure_requests == [{"t": 2}]
        w.set_reconfigured()
    assert state.update(0.4).converged


def test_code_change_rolls_without_dropping_below_target():
    state = make_state(3)
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)
    old_version = state.record.version
    state.set_target(BackendRecord.make("b", "c2", "i1", {}, state.record.config))
    now = 1.0
    for _ in range(30):
        update = state.update(now)
        run_actions(update, now, state)
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
        run_actions(update, now, state)
        for w in wrappers(state, S.STARTING):
            w.set_failed("ValueError: bad weights path '/nope'")
        failure = update.failure
        if failure:
            break
        now += 1.0
    assert failure is not None and "bad weights path" in failure and "failed to start" in failure


def test_dead_replica_is_replaced():
    state = make_state(2)
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)  # first health checks: healthy
    victim = wrappers(state, S.RUNNING)[0]
    victim.set_dead()
    assert state.update(0.2).serving_changed is False  # nobody looked yet
    victim.probe_now()  # what a router's death report does
    tick(state, 0.3)
    update = state.update(0.4)
    assert update.serving_changed
    assert [a.kind for a in update.actions] == ["stop", "start"]
    assert len(state.serving_infos()) == 1


def test_recover_keeps_existing_actors_and_drops_missing_ones():
    state = make_state(2)
    tick(state, 0.0)
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
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)
    state.set_target(state.with_target(deleting=True, target_replicas=0))
    tick(state, 0.2)
    tick(state, 0.3)  # past the (zero) grace period: killed
    assert state.update(0.4).converged
    assert len(state.replicas) == 0


def test_container_summary_and_repr():
    state = make_state(1)
    tick(state, 0.0)
    assert state.replicas.summary() == {"STARTING": 1}
    assert "STARTING" in repr(next(iter(state.replicas)))


def test_a_start_that_raises_is_a_failed_start_at_once():
    """Defect: a start action that raised left its replica in STARTING for ever."""
    state = make_state(1)
    FakeReplicaActorWrapper.start_error = ValueError(
        "Resource 'GPU' is not a valid custom resource; use num_gpus=1 instead")
    try:
        now, update = 0.0, None
        for _ in range(20):
            update = tick(state, now)
            assert not state.replicas.get(S.STARTING) or now == 0.0 or update.actions
            if update.failure:
                break
            now += 1.0
        assert update is not None and update.failure is not None
        assert "could not be started" in update.failure and "num_gpus=1" in update.failure
        assert now <= 5.0, "three failed starts must be decided within seconds"
    finally:
        FakeReplicaActorWrapper.start_error = None


def test_starting_replica_times_out_and_is_replaced_with_the_reason():
    state = make_state(1, startup_timeout_s=5.0)
    tick(state, 0.0)
    stuck = wrappers(state, S.STARTING)[0]
    assert tick(state, 4.0).actions == []  # still within the timeout
    update = tick(state, 5.5)
    assert stuck in wrappers(state, S.STOPPING) or stuck.killed
    assert "did not become ready within startup_timeout_s=5s" in state.status()["failure"]
    tick(state, 5.6)
    tick(state, 7.0)  # after the back-off, a replacement starts
    assert [w for w in wrappers(state, S.STARTING) if w is not stuck]


def test_recovering_replicas_stay_published_until_proven_dead():
    """Defect: after a controller restart, routers were told 'no replicas' while probes ran."""
    state = make_state(2)
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)
    tags = state.record.replica_tags
    fresh = make_state(2)
    fresh.recover(tags, now=10.0)
    update = fresh.update(10.0)
    assert update.serving_changed and len(fresh.serving_infos()) == 2  # published while RECOVERING
    assert not [a for a in update.actions if a.kind == "start"]
    FakeReplicaActorWrapper.registry[f"serveplane:b#{tags[0]}"].set_dead()
    tick(fresh, 10.1)
    assert len(fresh.serving_infos()) == 1  # the dead one leaves; the other keeps serving


def test_recovering_replica_that_never_answers_is_replaced_after_the_timeout():
    state = make_state(1, startup_timeout_s=3.0)
    tick(state, 0.0)
    wrappers(state, S.STARTING)[0].set_ready()
    tick(state, 0.1)
    fresh = make_state(1, startup_timeout_s=3.0)
    FakeReplicaActorWrapper.registry[f"serveplane:b#{state.record.replica_tags[0]}"]._ready = \
        __import__("serveplane.backend_state", fromlist=["ProbeStatus"]).ProbeStatus.PENDING
    fresh.recover(state.record.replica_tags, now=0.0)
    assert tick(fresh, 2.0).actions == []
    tick(fresh, 3.5)
    assert not fresh.replicas.get(S.RECOVERING)
    assert "did not answer within startup_timeout_s=3s" in fresh.status()["failure"]


@pytest.mark.parametrize("field,value", [("max_batch_size", 6), ("batch_wait_timeout", 0.5),
                                         ("max_concurrent_queries", 7), ("user_config", {"t": 3})],
                         ids=["max_batch_size", "batch_wait_timeout", "max_concurrent_queries",
                              "user_config"])
def test_in_place_config_change_converges_only_when_replicas_run_it(field, value):
    """Defect: max_batch_size & co. were read once at replica start, yet their goal completed."""
    state = make_state(2, user_config={"t": 1})
    tick(state, 0.0)
    for w in wrappers(state, S.STARTING):
        w.set_ready()
    tick(state, 0.1)
    version = state.record.version
    state.set_target(BackendRecord.make("b", "c1", "i1", {},
                                        state.record.config.model_copy(update={field: value})))
    assert state.record.version == version, f"{field} must not roll replicas over"
    update = tick(state, 0.2)
    assert sorted(a.kind for a in update.actions) == ["reconfigure", "reconfigure"]
    assert all(a.config[field] == value for a in update.actions)
    assert not state.update(0.3).converged
    for w in wrappers(state, S.UPDATING):
        w.set_reconfigured()
    assert state.update(0.4).converged


def test_health_checks_are_actions_not_side_effects_of_deciding():
    state = make_state(1)
    tick(state, 0.0)
    wrappers(state, S.STARTING)[0].set_ready()
    w = wrappers(state, S.STARTING)[0]
    update = state.update(0.1)  # decides a probe...
    assert [a.kind for a in update.actions] == ["probe"] and w.health_checks_sent == 0  # ...sends none
    run_actions(update, 0.1, state)
    assert w.health_checks_sent == 1
    assert state.next_wakeup(0.2) <= 0.2  # an answer is due: look at it next tick
    state.update(0.2)
    assert state.next_wakeup(0.3) == pytest.approx(10.1)  # then the next check, not every tick
