"""The router's queue, back-pressure, retries and dependency recovery, with a fake transport."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serveplane.exceptions import BackPressureError, NoReplicasError, ReplicaDiedError
from serveplane.records import keys
from serveplane.router import Handle, StaticSource
from serveplane.router.router import EndpointRouter
from tests.unit.router.fakes import FakeTransport, backend_config, dependency_died, publish, replica


def make(**publish_args):
    source = StaticSource()
    transport = FakeTransport()
    router = EndpointRouter("ep", source, transport=transport)
    made = publish(source, **publish_args)
    return source, transport, router, Handle(router), made


async def settle(rounds: int = 40) -> None:
    """Let call_soon(_threadsafe) callbacks and woken tasks run (no wall-clock sleep)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_one_call_per_request_with_its_metadata():
    _, transport, router, h, _ = make()
    response = h.options(method_name="predict", shard_key="user-7").remote(1, y=2)
    assert len(transport.calls) == 1
    call = transport.calls[0]
    assert (call.args, call.kwargs) == ((1,), {"y": 2})
    assert (call.meta.endpoint, call.meta.method_name, call.meta.shard_key) == ("ep", "predict", "user-7")
    assert call.meta.request_id == response.request_id
    call.answer("ok")
    assert response.result(timeout=1) == "ok"
    assert router.statistics()["in_flight"] == 0


def test_max_concurrent_queries_then_fifo_queue():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 2}})

    async def main():
        responses = [h.remote(i) for i in range(5)]
        assert [c.args[0] for c in transport.calls] == [0, 1]
        assert router.statistics()["queued"] == 3
        for expected_sent in (3, 4, 5):
            transport.pending()[0].answer("done")
            await settle()
            assert len(transport.calls) == expected_sent
        assert [c.args[0] for c in transport.calls] == [0, 1, 2, 3, 4]  # first come, first served
        for call in transport.pending():
            call.answer("done")
        assert await asyncio.gather(*responses) == ["done"] * 5
        stats = router.statistics()
        assert (stats["queued"], stats["in_flight"]) == (0, 0)

    asyncio.run(main())


def test_back_pressure_past_max_queued_requests():
    _, transport, router, h, _ = make(
        replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1, "max_queued_requests": 2}})

    async def main():
        running = h.remote(0)
        queued = [h.remote(1), h.remote(2)]
        with pytest.raises(BackPressureError, match=r"endpoint 'ep' has 2 requests queued .*limit "
                                                     r"\(max_queued_requests\) is 2"):
            h.remote(3)
        assert router.statistics()["back_pressure_rejections"] == 1
        for _ in range(3):
            transport.pending()[0].answer("x")
            await settle()
        assert await asyncio.gather(running, *queued) == ["x"] * 3
        assert router.statistics()["queued"] == 0

    asyncio.run(main())


def test_requests_wait_for_config_and_replicas_then_time_out():
    source = StaticSource()
    transport = FakeTransport(auto=lambda ref: ref.args[0])
    router = EndpointRouter("ep", source, transport=transport)
    h = Handle(router)

    async def main():
        early = h.remote("early")          # no endpoint config yet
        await settle()
        assert transport.calls == [] and router.statistics()["queued"] == 1
        publish(source, replicas={"b": 0})  # config, but no replica yet
        await settle()
        assert transport.calls == []
        source.set(keys.replicas("b"), (replica("b", "new"),))
        assert await asyncio.wait_for(early, 1) == "early"
        source.set(keys.replicas("b"), ())
        with pytest.raises(NoReplicasError, match="no replica of endpoint 'ep' .*within 0.05s"):
            await h.options(timeout_s=0.05).remote("late")
        assert router.statistics()["queued"] == 0

    asyncio.run(main())


def test_sync_caller_queues_on_the_background_loop():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})
    first = h.remote(1)
    second = h.remote(2)  # queued: routed by the background loop thread
    assert len(transport.calls) == 1
    answered = threading.Event()

    def answer_first():
        transport.calls[0].answer("one")
        answered.set()

    threading.Thread(target=answer_first).start()
    assert answered.wait(5)
    assert first.result(timeout=5) == "one"
    from serveplane.router.loop import wait_sync

    wait_sync(second.waiting, 5)   # it was handed the freed slot
    transport.calls[1].answer("two")
    assert second.result(timeout=5) == "two"


def test_in_flight_request_retried_on_another_replica_and_dead_replica_hidden():
    source, transport, router, h, made = make(replicas={"b": 2})

    async def main():
        response = asyncio.ensure_future(_awaited(h.remote("x")))
        first = transport.calls[0]
        first.die()
        await settle()
        assert len(transport.calls) == 2
        second = transport.calls[1]
        assert second.replica != first.replica and second.args == ("x",)
        second.answer("ok")
        assert await response == "ok"
        stats = router.statistics()
        assert stats["retries"] == 1 and stats["dead_replicas"] == [first.replica.actor_name]
        # the controller has not noticed yet: it still lists the dead replica
        source.set(keys.replicas("b"), tuple(made["b"]))
        assert first.replica.actor_name not in router.statistics()["replicas"]["b"]
        # once the controller drops it, it is forgotten
        source.set(keys.replicas("b"), (second.replica,))
        assert router.statistics()["dead_replicas"] == []

    asyncio.run(main())


def test_queued_request_goes_to_a_live_replica_when_one_dies():
    _, transport, router, h, _ = make(replicas={"b": 2}, config={"b": {"max_concurrent_queries": 1}})

    async def main():
        a, b = h.remote("a"), h.remote("b")
        queued = h.remote("queued")
        assert len(transport.calls) == 2
        dying = transport.calls[0]
        live = transport.calls[1].replica
        dying.die()   # "a" must be retried and "queued" was waiting: both need the live replica
        everything = asyncio.ensure_future(asyncio.gather(a, b, queued))
        deadline = asyncio.get_running_loop().time() + 5
        while not everything.done():  # answer whatever reaches a replica (retries cross threads)
            assert asyncio.get_running_loop().time() < deadline, transport.calls
            for call in transport.pending():
                assert call.replica == live
                call.answer(call.args[0])
            await asyncio.sleep(0.001)
        assert everything.result() == ["a", "b", "queued"]
        assert all(c.replica == live for c in transport.calls[1:])
        assert router.statistics()["dead_replicas"] == [dying.replica.actor_name]

    asyncio.run(main())


def test_replica_died_error_when_not_idempotent_or_out_of_retries():
    _, transport, router, h, made = make(replicas={"b": 3}, config={"b": {"idempotent": False}})
    response = h.remote("x")
    victim = transport.calls[0].replica.actor_name
    transport.calls[0].die()
    with pytest.raises(ReplicaDiedError, match=f"replica {victim} died .*endpoint 'ep'.*idempotent=False"):
        response.result(timeout=1)
    assert len(transport.calls) == 1 and router.statistics()["in_flight"] == 0

    source = StaticSource()
    transport = FakeTransport()
    router = EndpointRouter("ep", source, transport=transport)
    publish(source, replicas={"b": 3}, config={"b": {"max_retries": 2}})
    response = Handle(router).remote("x")

    async def main():
        reading = asyncio.ensure_future(_awaited(response))
        for _ in range(3):
            transport.pending()[0].die()
            await settle()
        with pytest.raises(ReplicaDiedError, match=r"retried 2 times \(max_retries=2\)"):
            await reading

    asyncio.run(main())
    assert len(transport.calls) == 3 and router.statistics()["in_flight"] == 0


def test_application_error_is_not_retried():
    _, transport, router, h, _ = make()
    response = h.remote("x")
    transport.calls[0].fail(ValueError("bad input 'x'"))
    with pytest.raises(ValueError, match="bad input"):
        response.result(timeout=1)
    with pytest.raises(ValueError, match="bad input"):  # a second look gives the same answer
        response.result(timeout=1)
    assert len(transport.calls) == 1
    assert router.statistics()["in_flight"] == 0 and router.statistics()["retries"] == 0


def test_two_awaiters_of_one_response_retry_it_once():
    _, transport, router, h, _ = make(replicas={"b": 2})

    async def main():
        response = h.remote("x")
        waiters = [asyncio.ensure_future(_awaited(response)) for _ in range(3)]
        await settle()
        transport.calls[0].die()
        await settle()
        assert len(transport.calls) == 2  # one retry, not one per awaiter
        transport.calls[1].answer("ok")
        assert await asyncio.gather(*waiters) == ["ok"] * 3
        assert router.statistics()["in_flight"] == 0

    asyncio.run(main())


async def _awaited(response):
    return await response


def test_response_argument_is_passed_as_its_ref_and_recovered_when_its_replica_dies():
    source = StaticSource()
    transport = FakeTransport()
    first_router = EndpointRouter("first", source, transport=transport)
    second_router = EndpointRouter("second", source, transport=transport)
    publish(source, "first", traffic={"f": 1.0}, replicas={"f": 2})
    publish(source, "second", traffic={"s": 1.0}, replicas={"s": 1})

    async def main():
        inner = Handle(first_router).remote(5)
        outer = Handle(second_router).remote(inner, y=1)
        inner_call, outer_call = transport.calls
        assert outer_call.args == (inner_call,)     # the ref itself, not the value
        reading = asyncio.ensure_future(_awaited(outer))
        inner_call.die()                            # the producer dies ...
        outer_call.fail(dependency_died(inner_call.replica))  # ... the consumer fails on its argument
        await settle()
        retried_inner = transport.calls[2]
        assert retried_inner.args == (5,) and retried_inner.replica != inner_call.replica
        retried_inner.answer(10)
        await settle()
        resent = transport.calls[3]
        assert resent.args == (retried_inner,) and resent.kwargs == {"y": 1}
        assert outer_call.replica.actor_name not in second_router.statistics()["dead_replicas"]
        resent.answer(11)
        assert await reading == 11 and await inner == 10

    asyncio.run(main())


def test_response_argument_still_queued_delays_the_second_call_not_the_caller():
    source = StaticSource()
    transport = FakeTransport()
    first_router = EndpointRouter("first", source, transport=transport)
    second_router = EndpointRouter("second", source, transport=transport)
    publish(source, "first", traffic={"f": 1.0}, replicas={"f": 1},
            config={"f": {"max_concurrent_queries": 1}})
    publish(source, "second", traffic={"s": 1.0}, replicas={"s": 1})

    async def main():
        busy = Handle(first_router).remote(0)
        inner = Handle(first_router).remote(5)      # queued
        outer = Handle(second_router).remote(inner)  # returns at once
        assert len(transport.calls) == 1
        transport.calls[0].answer(0)
        await settle()
        inner_call = transport.calls[1]
        await settle()
        assert transport.calls[2].args == (inner_call,)
        inner_call.answer(10)
        transport.calls[2].answer(20)
        assert await asyncio.gather(busy, inner, outer) == [0, 10, 20]

    asyncio.run(main())


def test_a_freed_slot_goes_back_when_its_waiter_gave_up():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})

    async def main():
        running = h.remote(0)
        abandoned = asyncio.ensure_future(_awaited(h.remote(1)))
        await settle()
        abandoned.cancel()
        await settle()
        transport.calls[0].answer(0)
        await running
        await settle()
        assert router.statistics()["in_flight"] == 0 and router.statistics()["queued"] == 0
        later = h.remote(2)
        transport.pending()[0].answer(2)
        assert await later == 2

    asyncio.run(main())


def test_limits_change_at_once():
    source, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})

    async def main():
        responses = [h.remote(i) for i in range(3)]
        assert len(transport.calls) == 1
        source.set(keys.backend_config("b"), backend_config("b", max_concurrent_queries=3))
        await settle()
        assert len(transport.calls) == 3
        for call in transport.pending():
            call.answer(call.args[0])
        assert await asyncio.gather(*responses) == [0, 1, 2]

    asyncio.run(main())


def test_metadata_travels_as_a_list_of_all_its_fields():
    import dataclasses

    from serveplane.records import RequestMetadata
    from serveplane.router.transport import wire_metadata

    meta = RequestMetadata("id-1", "ep", "predict", "s-1", "k-1", is_shadow=True, http=True)
    wire = wire_metadata(meta)
    assert len(wire) == len(dataclasses.fields(RequestMetadata))  # a new field must be added here
    assert RequestMetadata(*wire) == meta


def test_a_queued_request_never_waits_for_an_answer_nobody_reads():
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})
    unread = h.remote(1)
    queued = h.remote(2)
    transport.calls[0].answer(1)   # the caller never reads it (yet)
    from serveplane.router.loop import wait_sync

    wait_sync(queued.waiting, 5)   # the slot came back without unread.result()
    transport.calls[1].answer(2)
    assert queued.result(timeout=5) == 2
    assert unread.result(timeout=5) == 1
    assert router.statistics()["in_flight"] == 0


def test_deleted_endpoint_fails_new_and_queued_requests_at_once():
    source, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})
    from serveplane.exceptions import EndpointNotFoundError, NotFoundError

    async def main():
        first = h.remote(1)          # takes the only slot
        queued = h.remote(2)         # waits in the queue
        assert router.statistics()["queued"] == 1
        source.set(keys.endpoint("ep"), None)  # the controller published the delete
        with pytest.raises(EndpointNotFoundError, match="endpoint 'ep' was deleted"):
            await asyncio.wait_for(queued, 1.0)  # not after the request's 60 s timeout
        with pytest.raises(NotFoundError):
            h.remote(3)
        assert router.statistics()["queued"] == 0
        transport.pending()[0].answer("in flight finishes")
        assert await first == "in flight finishes"

    asyncio.run(main())


def test_an_endpoint_not_yet_known_waits_instead_of_failing():
    source = StaticSource()
    router = EndpointRouter("ep", source, transport=FakeTransport())
    response = Handle(router).options(timeout_s=0.2).remote(1)
    with pytest.raises(NoReplicasError):
        response.result(timeout=2)


def test_sent_ref_holds_the_slot_until_the_call_completes_then_frees_it():
    """Ray Serve 1.x's ray.get(handle.remote()): the ObjectRef comes back once a replica has
    the call; the router frees the slot when it completes, and never retries it."""
    _, transport, router, h, _ = make(replicas={"b": 1}, config={"b": {"max_concurrent_queries": 1}})
    ref = h.options(http_method="post", http_headers={"x-a": "1"}).remote(1, k=2).sent_ref(timeout=1)
    call = transport.calls[0]
    assert ref is call and (call.meta.http_method, call.meta.http_headers) == ("POST", {"x-a": "1"})
    assert router.statistics()["in_flight"] == 1
    call.answer("done")
    assert router.statistics()["in_flight"] == 0
    dying = h.remote(3).sent_ref(timeout=1)
    dying.die()
    assert len(transport.calls) == 2  # not retried: the caller holds that attempt's ref
    stats = router.statistics()
    assert stats["in_flight"] == 0 and stats["dead_replicas"] == [call.replica.actor_name]


def test_handle_options_refuse_bad_http_options():
    _, _, _, h, _ = make()
    with pytest.raises(ValueError, match="http_headers is"):
        h.options(http_headers={"x": 1})
    with pytest.raises(ValueError, match="http_method is"):
        h.options(http_method="")
