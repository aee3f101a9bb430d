"""Cancellation, replica refusals (admission) and batching by request, with a fake transport."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayTaskError

from serveplane.exceptions import NoReplicasError, ReplicaFullError, RequestCancelledError
from serveplane.router import Handle
from serveplane.router.state import RequestState
from tests.unit.router.fakes import FakeTransport, publish
from tests.unit.router.test_queue_and_failures import make, settle


def refused() -> BaseException:
    """What the router gets when a replica refuses a call (Ray wraps the replica's error)."""
    return RayTaskError("handle_request", "traceback", ReplicaFullError("full")).as_instanceof_cause()


def test_cancel_a_running_request_cancels_its_call_and_frees_its_slot_at_once():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})
    running = h.remote(1)
    waiting = h.remote(2)
    assert router.statistics()["queued"] == 1
    assert running.cancel() is True
    assert transport.cancelled == [transport.calls[0]]
    assert running.state is RequestState.CANCELLED
    with pytest.raises(RequestCancelledError):
        running.result(timeout=1)
    # the slot went to the queued request at once
    waiting_call = _wait_call(transport, 2)
    waiting_call.answer("two")
    assert waiting.result(timeout=1) == "two"
    assert running.cancel() is False  # already final


def test_a_cancelled_queued_request_never_reaches_a_replica():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})

    async def main():
        first = h.remote(1)
        second = h.remote(2)
        await settle()
        assert router.statistics()["queued"] == 1
        second.cancel()
        with pytest.raises(RequestCancelledError):
            await second
        transport.calls[0].answer("one")
        assert await first == "one"
        await settle()
        assert [c.args for c in transport.calls] == [(1,)]
        assert router.statistics()["queued"] == 0 and router.statistics()["in_flight"] == 0

    asyncio.run(main())


def test_cancelling_the_awaiting_task_cancels_the_request():
    _, transport, router, h, _ = make(replicas={"b": 1})

    async def main():
        task = asyncio.ensure_future(h.remote(1))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.cancelled == transport.calls[:1]
        assert router.statistics()["in_flight"] == 0

    asyncio.run(main())


def test_a_refusing_replica_is_tried_elsewhere_uncounted_even_when_not_idempotent():
    _, transport, router, h, made = make(replicas={"b": 2}, config={"b": {"idempotent": False,
                                                                         "max_retries": 0}})

    async def main():
        task = asyncio.ensure_future(h.remote("x"))
        await settle()
        first = transport.calls[0]
        first.fail(refused())
        for _ in range(100):
            await settle()
            if len(transport.calls) > 1:
                break
        second = transport.calls[1]
        assert second.replica != first.replica  # the full replica is held back briefly
        second.answer("ok")
        assert await task == "ok"

    asyncio.run(main())
    stats = router.statistics()
    assert stats["refused_by_replicas"] == 1 and stats["retries"] == 0


def test_queued_past_its_deadline_fails_and_never_runs():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})

    async def main():
        busy = h.remote(1)
        late = h.options(timeout_s=0.05).remote(2)
        with pytest.raises(NoReplicasError, match="never ran"):
            await late
        transport.calls[0].answer("one")
        assert await busy == "one"
        await settle()
        assert [c.args for c in transport.calls] == [(1,)]
        assert late.state is RequestState.FAILED

    asyncio.run(main())


def test_batches_split_by_replica_session_and_max_concurrent_queries():
    source_transport = FakeTransport()
    from serveplane.router import StaticSource
    from serveplane.router.router import EndpointRouter

    source = StaticSource()
    router = EndpointRouter("ep", source, transport=source_transport)
    publish(source, replicas={"b": 2}, config={"b": {"max_concurrent_queries": 2}}, batch_size=6,
            batch_timeout_s=60.0)
    h = Handle(router)
    sessions = [h.options(session_id=f"s{i % 2}") for i in range(6)]
    responses = [sessions[i].remote(i) for i in range(6)]
    calls = source_transport.calls
    # two sessions pinned to two replicas; each replica takes 2 (max_concurrent_queries)
    assert len(calls) == 2
    by_replica = {c.replica.actor_name: [a for a, _ in c.args[0]] for c in calls}
    assert len(by_replica) == 2
    for args in by_replica.values():
        assert len(args) == 2 and len({a[0] % 2 for a in args}) == 1  # one session per replica
    assert router.statistics()["in_flight"] == 4
    for call in calls:
        call.answer([(True, a[0]) for a, _ in call.args[0]])
    assert [r.result(timeout=2) for r in responses[:4]] == [0, 1, 2, 3]
    for call in _wait_calls(source_transport, 4)[2:]:  # the two that waited go one by one
        call.answer(call.args[0])
    assert [r.result(timeout=2) for r in responses[4:]] == [4, 5]


def _wait_calls(transport, n, timeout=2.0):
    import time

    deadline = time.monotonic() + timeout
    while len(transport.calls) < n:
        assert time.monotonic() < deadline, transport.calls
        time.sleep(0.005)
    return transport.calls


def _wait_call(transport, arg, skip=0, timeout=2.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in transport.calls if c.args == (arg,)]
        if len(found) > skip:
            return found[skip]
        assert time.monotonic() < deadline, transport.calls
        time.sleep(0.005)


def test_a_backend_this_router_has_not_heard_of_yet_is_no_reason_for_back_pressure():
    """A new endpoint's first requests wait for its replicas to be published here; they
    do not count against the backend's max_queued_requests (0 here)."""
    from serveplane.records import keys
    from serveplane.router import StaticSource
    from serveplane.router.router import EndpointRouter
    from tests.unit.router.fakes import backend_config, endpoint, replica

    source = StaticSource()
    transport = FakeTransport(auto=lambda ref: ref.args[0])
    router = EndpointRouter("ep", source, transport=transport)
    source.set(keys.backend_config("b"), backend_config("b", max_concurrent_queries=1, max_queued_requests=0))
    source.set(keys.endpoint("ep"), endpoint("ep", {"b": 1.0}))

    async def main():
        early = Handle(router).remote("first")
        await settle()
        assert router.statistics()["queued"] == 1
        source.set(keys.replicas("b"), (replica("b", "r0"),))
        assert await asyncio.wait_for(early, 2) == "first"

    asyncio.run(main())
