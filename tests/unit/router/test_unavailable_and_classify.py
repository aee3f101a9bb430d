"""Transient is not death: unreachable replicas are backed off, user errors stay user errors."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from serveplane.exceptions import ReplicaDiedError
from serveplane.router import Handle, StaticSource
from serveplane.router import holds as router_module
from serveplane.router.backoff import ReplicaBackoff
from serveplane.router.router import EndpointRouter
from serveplane.router.transport import Failure, RayTransport
from tests.unit.router.fakes import (
    FakeTransport,
    actor_died,
    actor_id,
    dependency_died,
    nested_call_died,
    publish,
    replica,
)

OURS = replica("b", "r0")
PRODUCER = replica("f", "r0")
ELSEWHERE = replica("x", "r9")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unavailable(of):
    return ActorUnavailableError("connection lost", bytes.fromhex(actor_id(of)))


class ActorDiedLookalike(Exception):
    """A user exception that merely shares Ray's class name."""


ActorDiedLookalike.__name__ = "ActorDiedError"


APP, DEP = Failure.APPLICATION, Failure.DEPENDENCY_DIED


@pytest.mark.parametrize("error, producers, expected", [
    pytest.param(ValueError("The actor died unexpectedly before finishing this task."), (), APP,
                 id="user-error-says-actor-died"),
    pytest.param(RuntimeError("actor died"), (PRODUCER,), APP, id="user-error-says-actor-died-with-args"),
    pytest.param(ActorDiedLookalike("the replica's actor died"), (), APP, id="user-class-named-like-ray's"),
    pytest.param(nested_call_died(ELSEWHERE), (), APP, id="user-nested-call-died"),
    pytest.param(nested_call_died(ELSEWHERE), (PRODUCER,), APP, id="user-nested-call-died-with-args"),
    pytest.param(nested_call_died(None), (PRODUCER,), APP, id="nested-death-of-unknown-actor"),
    pytest.param(RayTaskError("f", "tb", unavailable(ELSEWHERE)).as_instanceof_cause(), (PRODUCER,), APP,
                 id="user-nested-call-unreachable"),
    pytest.param(dependency_died(PRODUCER), (PRODUCER,), DEP, id="argument-producer-died"),
    pytest.param(RayTaskError("f", "tb", actor_died(PRODUCER)), (PRODUCER,), DEP,
                 id="argument-producer-died-plain-task-error"),
    pytest.param(RayTaskError("f", "tb", unavailable(PRODUCER)).as_instanceof_cause(), (PRODUCER,), DEP,
                 id="argument-producer-unreachable"),
    pytest.param(actor_died(OURS), (), Failure.REPLICA_DIED, id="replica-died"),
    pytest.param(ActorDiedError(), (), Failure.REPLICA_DIED, id="replica-died-unknown-id"),
    pytest.param(actor_died(ELSEWHERE), (), DEP, id="other-actor-died-unwrapped"),
    pytest.param(unavailable(OURS), (PRODUCER,), Failure.REPLICA_UNAVAILABLE, id="replica-unreachable"),
])
def test_classify_by_type_and_actor_identity_never_by_text(error, producers, expected):
    assert RayTransport.classify(error, OURS, producers) is expected


def make(**publish_args):
    clock = FakeClock()
    return make_with(ReplicaBackoff(clock), clock, **publish_args)


def make_with(backoff, clock, **publish_args):
    source = StaticSource()
    transport = FakeTransport()
    router = EndpointRouter("ep", source, transport=transport, controller_name="controller",
                            namespace="ns", backoff=backoff)
    made = publish(source, **publish_args)
    return transport, router, Handle(router), made, clock


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_unreachable_replica_is_backed_off_retried_elsewhere_and_never_reported(monkeypatch):
    reported = []
    monkeypatch.setattr(router_module, "report_replica_died", lambda *args: reported.append(args))
    transport, router, h, made, clock = make(replicas={"b": 2})

    async def main():
        reading = asyncio.ensure_future(_awaited(h.remote("x")))
        first = transport.calls[0]
        first.unavailable()
        await settle()
        second = transport.calls[1]
        assert second.replica != first.replica and second.args == ("x",)
        second.answer("ok")
        assert await reading == "ok"
        return first.replica

    flaky = asyncio.run(main())
    stats = router.statistics()
    assert stats["retries"] == 1 and stats["dead_replicas"] == []
    assert stats["backed_off_replicas"] == [flaky.actor_name]
    assert flaky.actor_name not in stats["replicas"]["b"]
    assert reported == []  # the controller decides deaths; a blip is not one
    clock.now += 0.1  # the first period is over: eligible again
    assert router.statistics()["backed_off_replicas"] == []
    assert flaky.actor_name in router.statistics()["replicas"]["b"]
    sent_to = []
    for i in range(4):
        response = h.remote(i)
        sent_to.append(transport.calls[-1].replica)
        transport.calls[-1].answer(i)
        assert response.result(timeout=1) == i
    assert flaky in sent_to


def test_not_idempotent_request_is_not_resent_after_an_unreachable_replica():
    transport, router, h, made, clock = make(replicas={"b": 3}, config={"b": {"idempotent": False}})
    response = h.remote("x")
    victim = transport.calls[0].replica.actor_name
    transport.calls[0].unavailable()
    with pytest.raises(ReplicaDiedError, match=f"replica {victim} became unreachable .*endpoint 'ep'; "
                                               r"not retried because it may have run .*idempotent=False"):
        response.result(timeout=1)
    assert len(transport.calls) == 1
    stats = router.statistics()
    assert stats["in_flight"] == 0 and stats["dead_replicas"] == []
    assert stats["backed_off_replicas"] == [victim]
    clock.now += 0.1  # ends the period (and the router's timer that waits for it)


def test_backoff_period_grows_while_unreachable_and_resets_on_an_answer():
    clock = FakeClock()
    backoff = ReplicaBackoff(clock, initial_s=0.1, max_s=0.5)
    periods = []
    for _ in range(5):
        periods.append(backoff.unavailable("r"))
        assert backoff.unavailable("r") == pytest.approx(periods[-1])  # in-flight calls: one event
        assert backoff.blocked() == {"r"}
        clock.now += periods[-1]
        assert backoff.blocked() == frozenset()
    assert periods == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    backoff.answered("r")
    assert backoff.unavailable("r") == pytest.approx(0.1)
    backoff.keep_only([])
    assert backoff.blocked() == frozenset() and backoff.next_end_in() is None
    with pytest.raises(ValueError, match=r"initial_s=0, max_s=5.0; they must satisfy 0 < initial_s <= max_s"):
        ReplicaBackoff(initial_s=0, max_s=5.0)


def test_router_resets_the_backoff_when_the_replica_answers():
    clock = FakeClock()
    router_backoff = ReplicaBackoff(clock)
    transport, router, h, made, clock = make_with(router_backoff, clock, replicas={"b": 1})
    only = made["b"][0].actor_name

    async def blip_then_answer(value):
        """The only replica is unreachable once; the retry waits out the period, then succeeds."""
        reading = asyncio.ensure_future(_awaited(h.remote(value)))
        await settle()
        sent = len(transport.calls)
        transport.calls[-1].unavailable()
        await settle()
        assert router.statistics()["backed_off_replicas"] == [only]
        period = router_backoff.next_end_in()
        clock.now += period
        await _sent_more_than(transport, sent)   # woken when the period ended
        transport.calls[-1].answer(value)
        assert await reading == value
        return period

    async def main():
        first = await blip_then_answer("x")
        return first, await blip_then_answer("z")  # not 0.2: the answer to "x" reset it

    assert asyncio.run(main()) == pytest.approx((0.1, 0.1))


def test_the_period_grows_while_the_replica_stays_unreachable():
    clock = FakeClock()
    backoff = ReplicaBackoff(clock)
    transport, router, h, made, clock = make_with(backoff, clock, replicas={"b": 1})

    async def main():
        reading = asyncio.ensure_future(_awaited(h.remote("x")))
        await settle()
        periods = []
        for _ in range(3):
            sent = len(transport.calls)
            transport.calls[-1].unavailable()
            await settle()
            periods.append(backoff.next_end_in())
            clock.now += periods[-1]
            await _sent_more_than(transport, sent)
        transport.calls[-1].answer("x")
        assert await reading == "x"
        return periods

    assert asyncio.run(main()) == pytest.approx([0.1, 0.2, 0.4])


def test_a_queued_request_is_woken_when_the_backoff_ends():
    source = StaticSource()
    transport = FakeTransport()
    router = EndpointRouter("ep", source, transport=transport, backoff=ReplicaBackoff(initial_s=0.01))
    publish(source, replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})
    h = Handle(router)

    async def main():
        reading = asyncio.ensure_future(_awaited(h.remote("x")))
        queued = asyncio.ensure_future(_awaited(h.remote("y")))
        await settle()
        assert len(transport.calls) == 1 and router.statistics()["queued"] == 1
        transport.calls[0].unavailable()   # the only replica: both must wait for the period
        for sent in (1, 2):
            await _sent_more_than(transport, sent)
            transport.calls[-1].answer(transport.calls[-1].args[0])
        assert sorted(await asyncio.gather(reading, queued)) == ["x", "y"]

    asyncio.run(main())
    assert len(transport.calls) == 3 and {c.replica for c in transport.calls} == {transport.calls[0].replica}


def test_user_error_from_a_nested_call_is_the_callers_error_even_with_response_arguments():
    source = StaticSource()
    transport = FakeTransport()
    first = EndpointRouter("first", source, transport=transport)
    second = EndpointRouter("second", source, transport=transport)
    publish(source, "first", traffic={"f": 1.0}, replicas={"f": 1})
    publish(source, "second", traffic={"s": 1.0}, replicas={"s": 2}, config={"s": {"idempotent": False}})

    async def main():
        inner = Handle(first).remote(5)
        outer = Handle(second).remote(inner)
        inner_call, outer_call = transport.calls
        inner_call.answer(10)
        # the user's code in the second replica called some other actor, which died
        outer_call.fail(nested_call_died(ELSEWHERE))
        with pytest.raises(ActorDiedError):
            await outer
        assert await inner == 10

    asyncio.run(main())
    assert len(transport.calls) == 2  # never re-run: user code already ran on that replica
    stats = second.statistics()
    assert stats["retries"] == 0 and stats["dead_replicas"] == [] and stats["backed_off_replicas"] == []


def test_user_error_that_says_actor_died_is_not_retried_and_hides_nothing():
    transport, router, h, _, _ = make(replicas={"b": 2})
    response = h.remote("x")
    transport.calls[0].fail(RuntimeError("The actor died unexpectedly before finishing this task."))
    with pytest.raises(RuntimeError, match="actor died"):
        response.result(timeout=1)
    stats = router.statistics()
    assert len(transport.calls) == 1 and stats["retries"] == 0
    assert stats["dead_replicas"] == [] and stats["backed_off_replicas"] == []


async def _awaited(response):
    return await response


async def _sent_more_than(transport, count, timeout_s=5.0):
    """Wait until the router (woken by its backoff timer) has sent another call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(transport.calls) <= count:
        assert loop.time() < deadline, f"no call after the first {count} within {timeout_s}s"
        await asyncio.sleep(0.001)
