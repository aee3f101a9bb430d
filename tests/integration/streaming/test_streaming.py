"""Streaming, cancellation, deadlines and replica-side admission on real Ray and real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import ray

import serveplane
from serveplane import BackendConfig
from serveplane.exceptions import (
    NoReplicasError,
    ReplicaDiedError,
    RequestCancelledError,
    RequestTimeoutError,
    StreamingMethodError,
)
from tests.integration.http.helpers import proxy
from tests.integration.streaming.backends import Nested, Streamer
from tests.waiting import wait_for

pytestmark = pytest.mark.ray


def counters(handle) -> dict:
    return handle.options(method_name="counters").remote().result(timeout=30)


@pytest.fixture
def streamer(serve_instance):
    client = serve_instance
    client.create_backend("streamer", Streamer, config=BackendConfig(max_concurrent_queries=4))
    client.create_endpoint("stream", backend="streamer", route="/stream")
    return client, client.get_handle("stream")


def test_handle_stream_yields_chunks_as_the_replica_produces_them(streamer):
    _, h = streamer
    seen = []
    for chunk in h.options(method_name="tokens", stream=True).remote(5, 0.3):
        seen.append((chunk, time.monotonic()))
    assert [c for c, _ in seen] == [f"tok{i} " for i in range(5)]
    first, last = seen[0][1], seen[-1][1]
    assert last - first > 0.9, "chunks arrived together: the stream was collected"

    async def read():
        out = []
        async for chunk in h.options(method_name="sync_tokens", stream=True).remote(4, 0.3):
            out.append((chunk, time.monotonic()))
        return out

    out = asyncio.run(read())
    assert [c for c, _ in out] == [0, 1, 2, 3]
    assert out[-1][1] - out[0][1] > 0.6


def test_generator_method_without_stream_is_a_clear_error(streamer):
    _, h = streamer
    with pytest.raises(StreamingMethodError, match="(?s)method 'tokens' .*stream=True"):
        h.options(method_name="tokens").remote(2).result(timeout=30)
    # a stream of a method that returns one value: that value is its one chunk
    assert list(h.options(method_name="one_value", stream=True).remote(3)) == [{"x": 3}]


def test_stream_cancel_stops_the_generator_and_frees_the_slot(streamer):
    _, h = streamer
    stream = h.options(method_name="endless", stream=True).remote(0.01)
    assert next(stream) == "0\n"
    assert stream.cancel() is True
    assert h.router.statistics()["in_flight"] == 0  # freed at once
    wait_for(lambda: counters(h)["cancelled"] == 1, what="the generator's CancelledError")
    produced = counters(h)["produced"]
    time.sleep(0.3)  # nothing left running could produce more
    assert counters(h)["produced"] == produced
    with pytest.raises(RequestCancelledError):
        next(stream)


def test_back_pressure_a_slow_reader_holds_the_producer_back(streamer):
    _, h = streamer

    async def read_slowly():
        stream = h.options(method_name="endless", stream=True).remote(0.0)
        read = 0
        async for _ in stream:
            read += 1
            if read == 5:
                break
        await asyncio.sleep(1.0)  # the producer would make ~thousands of chunks unchecked
        produced = (await h.options(method_name="counters").remote())["produced"]
        stream.cancel()
        return read, produced

    read, produced = asyncio.run(read_slowly())
    from serveplane.replica.streaming import COALESCE_MAX, STREAM_BUFFER

    # unchecked, a producer with no pause makes tens of thousands of chunks a second
    assert produced <= read + (STREAM_BUFFER + 2) * COALESCE_MAX, produced


def test_cancel_reaches_running_replica_code_and_queued_requests_never_run(serve_instance):
    client = serve_instance
    client.create_backend("one", Streamer, config=BackendConfig(max_concurrent_queries=1))
    client.create_endpoint("one", backend="one")
    h = client.get_handle("one").options(method_name="slow")
    running = h.remote(30)
    queued = h.remote(30)
    wait_for(lambda: h.router.statistics()["queued"] == 1, what=f"a queued request {h.router.statistics()}")
    assert queued.cancel()
    with pytest.raises(RequestCancelledError):
        queued.result(timeout=10)
    running.cancel()
    with pytest.raises(RequestCancelledError):
        running.result(timeout=10)
    assert h.router.statistics()["in_flight"] == 0
    got = wait_for(lambda: (c := counters(client.get_handle("one")))["cancelled"] == 1 and c,
                   what="CancelledError in the replica")
    assert got["started"] == 1, "the cancelled queued request reached the replica"

    async def cancel_the_awaiting_task():
        task = asyncio.ensure_future(h.remote(30))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_the_awaiting_task())
    wait_for(lambda: counters(client.get_handle("one"))["cancelled"] == 2, what="second cancellation")


def test_deadline_queued_past_it_never_runs_and_running_past_it_is_cancelled(serve_instance):
    client = serve_instance
    client.create_backend("dl", Streamer, config=BackendConfig(max_concurrent_queries=1))
    client.create_endpoint("dl", backend="dl")
    h = client.get_handle("dl")
    busy = h.options(method_name="slow").remote(2.0)
    late = h.options(method_name="slow", timeout_s=0.5).remote(0.1)
    with pytest.raises(RequestTimeoutError, match="never ran"):
        late.result()
    assert isinstance(late.failure, NoReplicasError)
    assert busy.result(timeout=30) == "finished"
    assert counters(h)["started"] == 1
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        h.options(method_name="slow", timeout_s=0.5).remote(30).result()
    assert time.monotonic() - started < 5
    wait_for(lambda: counters(h)["cancelled"] == 1, what="the replica's call cancelled at the deadline")
    left = h.options(method_name="remaining", timeout_s=5).remote().result()
    assert 0 < left <= 5
    assert h.options(method_name="remaining").remote().result(timeout=30) is None


def test_nested_calls_inherit_the_remaining_budget(serve_instance):
    client = serve_instance
    client.create_backend("inner", Streamer)
    client.create_endpoint("inner", backend="inner")
    client.create_backend("outer", Nested, "inner")
    client.create_endpoint("outer", backend="outer")
    h = client.get_handle("outer")
    got = h.options(method_name="remaining_inside", timeout_s=4).remote().result()
    assert 0 < got["inner"] <= got["outer"] <= 4
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        h.options(method_name="slow_inside", timeout_s=1).remote(30).result()
    assert time.monotonic() - started < 6
    inner = client.get_handle("inner")
    wait_for(lambda: counters(inner)["cancelled"] == 1, what="the nested call cancelled with its parent")


def test_http_streams_chunked_and_as_server_sent_events():
    with proxy() as (client, base):
        client.create_backend("words", Streamer)
        client.create_endpoint("words", backend="words", route="/words", methods=["POST", "GET"])
        with httpx.Client(timeout=30) as http:
            times = []
            with http.stream("POST", f"{base}/words", content=b"a b c d") as r:
                assert r.status_code == 200
                for chunk in r.iter_text():
                    times.append((chunk, time.monotonic()))
            assert "".join(c for c, _ in times) == "abcd"
            assert times[-1][1] - times[0][1] > 0.4, "the body arrived at once"
            events = []
            with http.stream("POST", f"{base}/words", content=b"x y z",
                             headers={"Accept": "text/event-stream"}) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):])
            assert events == ["x", "y", "z"]
            # a StreamingResponse the backend returns: first through the hand-off, then direct
            for _ in range(2):
                ticks = []
                with http.stream("GET", f"{base}/words", headers={"X-SERVE-CALL-METHOD": "sse"},
                                 params={"n": "3"}) as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"].startswith("text/event-stream")
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            ticks.append((line, time.monotonic()))
                assert [t for t, _ in ticks] == ["data: 0", "data: 1", "data: 2"]
                assert ticks[-1][1] - ticks[0][1] > 0.3, "the StreamingResponse was collected"


def test_http_disconnect_cancels_and_timeout_header_is_a_deadline():
    with proxy() as (client, base):
        client.create_backend("c", Streamer)
        client.create_endpoint("c", backend="c", route="/c", methods=["GET"])
        h = client.get_handle("c")
        with httpx.Client(timeout=30) as http:
            with http.stream("GET", f"{base}/c", headers={"X-SERVE-CALL-METHOD": "endless_http"}) as r:
                first = next(r.iter_lines())
                assert first == "0"
            # the connection closed mid-stream: the generator is cancelled
            wait_for(lambda: counters(h)["cancelled"] == 1, what="generator cancelled on disconnect")
            with pytest.raises(httpx.ReadTimeout):
                http.get(f"{base}/c", headers={"X-SERVE-CALL-METHOD": "slow_http"}, params={"s": "30"},
                         timeout=1.0)
            wait_for(lambda: counters(h)["cancelled"] == 2, what="call cancelled on disconnect")
            started = time.monotonic()
            r = http.get(f"{base}/c", headers={"X-SERVE-CALL-METHOD": "slow_http", "X-SERVE-TIMEOUT-S": "0.5"},
                         params={"s": "30"})
            assert r.status_code == 504 and time.monotonic() - started < 5, r.text
            wait_for(lambda: counters(h)["cancelled"] == 3, what="call cancelled at its deadline")
            r = http.get(f"{base}/c", headers={"X-SERVE-CALL-METHOD": "slow_http", "X-SERVE-TIMEOUT-S": "soon"})
            assert r.status_code == 400 and "X-SERVE-TIMEOUT-S" in r.json()["error"]


def test_a_stream_whose_replica_dies_is_retried_before_its_first_chunk_and_cut_after(serve_instance):
    client = serve_instance
    client.create_backend("dies", Streamer, config=BackendConfig(idempotent=True, num_replicas=2))
    client.create_endpoint("dies", backend="dies")
    h = client.get_handle("dies")
    wait_for(lambda: len(h.router.statistics()["replicas"].get("dies", [])) == 2, what="two replicas")
    early = h.options(method_name="late_tokens", stream=True).remote(1.0)
    ray.kill(early.replica.actor_handle, no_restart=True)  # before its first chunk
    assert list(early) == [0, 1, 2]
    assert h.router.statistics()["retries"] == 1
    stream = h.options(method_name="endless", stream=True).remote(0.05)
    assert next(stream) == "0\n"
    ray.kill(stream.replica.actor_handle, no_restart=True)
    with pytest.raises(ReplicaDiedError, match="already delivered"):
        for _ in range(1000):
            next(stream)
