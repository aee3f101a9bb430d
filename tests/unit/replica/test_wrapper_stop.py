"""Issue 22 #13: when the controller may kill a replica it asked to drain (no Ray started)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import ray.exceptions

from serveplane.backend_state.wrapper import ReplicaActorWrapper


class _Method:
    def __init__(self, future: Future) -> None:
        self._future = future

    def remote(self, *args: object) -> "_Method":
        return self

    def future(self) -> Future:
        return self._future


class _Actor:
    def __init__(self) -> None:
        self.drain: Future = Future()
        self.prepare_for_shutdown = _Method(self.drain)


def _stopping(timeout_s: float = 10.0) -> tuple[ReplicaActorWrapper, _Actor]:
    wrapper = ReplicaActorWrapper("b", "r0", "ns")
    actor = _Actor()
    wrapper.actor_handle = actor
    wrapper.begin_stop(timeout_s, now=100.0)
    return wrapper, actor


def test_kill_waits_for_the_drain_to_answer_until_the_graceful_deadline():
    wrapper, actor = _stopping()
    assert not wrapper.stop_finished(105.0)
    actor.drain.set_result(0)
    assert wrapper.stop_finished(105.0)


def test_a_drain_call_that_failed_transiently_proves_nothing_the_kill_waits_for_the_deadline():
    """Killed at once, a replica still running requests loses them."""
    wrapper, actor = _stopping()
    actor.drain.set_exception(ray.exceptions.ActorUnavailableError("node overloaded", None))
    assert not wrapper.stop_finished(101.0)
    assert wrapper.stop_finished(110.0)


@pytest.mark.parametrize("error", [ray.exceptions.ActorDiedError()], ids=["died"])
def test_a_replica_that_died_while_draining_is_removed_at_once(error):
    wrapper, actor = _stopping()
    actor.drain.set_exception(error)
    assert wrapper.stop_finished(101.0)


def test_no_graceful_timeout_kills_at_once():
    wrapper, _ = _stopping(timeout_s=0.0)
    assert wrapper.stop_finished(100.0)
