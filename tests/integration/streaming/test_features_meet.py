"""Where data-path features meet, on real Ray (issue 22): streams and queueing, dropped
streams, shadows of streaming endpoints, batch-mates and cancels, and what a caller sees
when something fails. Each test failed on the router before its fix."""

from __future__ import annotations

import asyncio
import gc

import pytest
from ray.exceptions import RayTaskError

from serveplane import BackendConfig
from serveplane.exceptions import RequestCancelledError
from tests.integration.streaming.backends import Meeting
from tests.waiting import wait_for

pytestmark = pytest.mark.ray


@pytest.fixture
def meeting(serve_instance):
    client = serve_instance
    client.create_backend("meet", Meeting, config=BackendConfig(max_concurrent_queries=2))
    client.create_endpoint("meet", backend="meet")
    h = client.get_handle("meet")
    assert h.options(method_name="echo").remote(0).result(timeout=60) == {"x": 0}
    return client, h


def test_a_request_that_queues_behind_running_streams_is_sent_when_one_ends(meeting):
    """Item 1: once streams filled the replica, queueing a request raised AttributeError
    (Ray's generator has no completion callback) and the request was lost."""
    _, h = meeting
    streams = [iter(h.options(method_name="tokens", stream=True).remote(4, 0.2)) for _ in range(2)]
    assert [next(s) for s in streams] == ["tok0", "tok0"]  # both slots are taken
    queued = h.options(method_name="echo", timeout_s=30).remote(7)  # raised AttributeError before
    assert h.router.statistics()["queued"] == 1
    assert [list(s) for s in streams] == [["tok1", "tok2", "tok3"]] * 2
    assert queued.result(timeout=30) == {"x": 7}
    assert h.router.statistics()["in_flight"] == 0


def test_a_stream_dropped_without_cancel_frees_its_slot_and_stops_its_generator(meeting):
    """Item 2: a stream dropped unread kept its slot for good; after max_concurrent_queries
    of them the router never sent to that replica again."""
    _, h = meeting
    for _ in range(3):  # more than max_concurrent_queries (2)
        stream = iter(h.options(method_name="endless", stream=True).remote())
        assert next(stream) == 0
        del stream
        gc.collect()
    assert h.options(method_name="echo", timeout_s=10).remote(1).result(timeout=15) == {"x": 1}
    wait_for(lambda: h.options(method_name="stopped_streams").remote().result(timeout=10) == 3,
             timeout=20, what="the replica to stop every dropped stream's generator")
    wait_for(lambda: h.router.statistics()["in_flight"] == 0, timeout=10, what="no slot held")


def test_a_streaming_endpoints_shadow_is_read_as_a_stream_and_compared(meeting):
    """Item 6: shadows of a stream were sent as unary calls and failed with
    StreamingMethodError; they were never compared."""
    client, h = meeting
    client.create_backend("meet-shadow", Meeting)
    client.shadow_traffic("meet", "meet-shadow", 1.0)
    wait_for(lambda: h.router.endpoint_info is not None and h.router.endpoint_info.shadows
             and h.router.statistics()["replicas"].get("meet-shadow"), timeout=30,
             what="the router to know the shadow backend's replica")
    for _ in range(5):
        assert list(h.options(method_name="tokens", stream=True).remote(3, 0.01)) == ["tok0", "tok1", "tok2"]
    wait_for(lambda: h.router.statistics()["shadows"]["meet-shadow"]["compared"] >= 5, timeout=20,
             what="five shadow streams compared")
    shadow = h.router.statistics()["shadows"]["meet-shadow"]
    assert shadow["errors"] == 0 and shadow["agreed"] == shadow["compared"], shadow


def test_a_cancelled_caller_never_breaks_its_router_side_batch(serve_instance):
    """A cancelled batch-mate cancelled the batch's one call: the others got
    RayTaskError(TaskCancelledError)."""
    client = serve_instance
    client.create_backend("batched", Meeting, config=BackendConfig(max_concurrent_queries=8))
    client.create_endpoint("batched", backend="batched", batch_size=4, batch_timeout_s=0.05)
    h = client.get_handle("batched").options(method_name="echo")
    assert h.remote(0, 0.0).result(timeout=60) == {"x": 0}

    async def main():
        calls = [h.remote(i, 0.3) for i in range(4)]
        await asyncio.sleep(0.15)  # the batch is on the replica
        assert calls[1].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        return results

    results = asyncio.run(main())
    assert isinstance(results[1], RequestCancelledError)
    assert [results[i] for i in (0, 2, 3)] == [{"x": 0}, {"x": 2}, {"x": 3}], results


def test_a_user_error_keeps_its_type_and_leads_with_its_own_message(meeting):
    """Item 14: the message began with Ray's colour codes, pid, IP and actor id."""
    _, h = meeting
    with pytest.raises(LookupError) as caught:
        h.options(method_name="fail").remote("no such customer 42").result(timeout=30)
    text = str(caught.value)
    assert text.startswith("no such customer 42"), text
    assert "\x1b[" not in text and "pid=" not in text and "actor_id" not in text
    assert isinstance(caught.value.__cause__, RayTaskError)  # Ray's detail stays reachable

    async def main():
        with pytest.raises(LookupError) as caught_async:
            await h.options(method_name="fail").remote("async 7")
        return str(caught_async.value)

    assert asyncio.run(main()).startswith("async 7")
