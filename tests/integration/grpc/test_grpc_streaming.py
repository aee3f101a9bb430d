"""Server streaming, deadlines and cancellation through the gRPC proxy: chunks arrive as the
replica's generator yields them, and a client that cancels (or whose deadline passes) stops
the replica's work."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.integration.grpc import echo_pb2, echo_pb2_grpc
from tests.integration.grpc.conftest import wait_for
from tests.integration.grpc.test_grpc_proxy import ECHO, Req, assert_serving, status_of

pytestmark = [pytest.mark.ray]


def test_chunks_arrive_as_the_generator_yields_them(instance):
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    started = time.monotonic()
    arrivals, indexes = [], []
    for chunk in stub.Count(Req(text="c", n=5, sleep_s=0.3), timeout=20, metadata=ECHO):
        arrivals.append(time.monotonic() - started)
        indexes.append(chunk.index)
        assert isinstance(chunk, echo_pb2.EchoReply) and chunk.text == "c"
    assert indexes == [0, 1, 2, 3, 4]
    # chunk i is produced at about 0.3 * (i + 1) s: the first must not wait for the last, and
    # the chunks come spread out (one late chunk on a loaded machine may bunch with the next)
    assert arrivals[0] < arrivals[-1] - 0.6, arrivals
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
    assert gaps[1] > 0.1, arrivals
    assert_serving(instance)


def test_stream_by_method_and_an_error_mid_stream(instance):
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    assert [c.index for c in stub.Count(Req(n=3), timeout=20)] == [0, 1, 2]  # no metadata
    received = []

    def read():
        for chunk in stub.Count(Req(n=5, fail=True), timeout=20, metadata=ECHO):
            received.append(chunk.index)

    error = status_of(read)
    assert received == [0]
    assert error.code() == grpc.StatusCode.INTERNAL and "secret" not in error.details()
    assert dict(error.trailing_metadata())["error-id"] in error.details()
    assert_serving(instance)


def test_client_cancel_stops_the_replica(instance):
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    metadata = [("endpoint", "echo"), ("session-id", "cancel-unary")]  # one replica: its counters
    before = counters_of_session(instance, "cancel-unary")
    call = stub.Say.future(Req(text="long", sleep_s=30), timeout=60, metadata=metadata)
    wait_for(lambda: counters_of_session(instance, "cancel-unary")["running"] == 1, what="the call running")
    call.cancel()
    wait_for(lambda: counters_of_session(instance, "cancel-unary")["cancelled"] == before["cancelled"] + 1,
             what="the replica's call cancelled")
    assert wait_for(lambda: instance.statistics()["answered"].get("CANCELLED", 0) >= 1)
    assert_serving(instance)


def test_stream_cancel_stops_the_generator(instance):
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    metadata = [("endpoint", "echo"), ("session-id", "cancel-stream")]
    before = counters_of_session(instance, "cancel-stream")
    stream = stub.Count(Req(n=1000, sleep_s=0.05), timeout=60, metadata=metadata)
    assert next(stream).index == 0
    stream.cancel()
    wait_for(lambda: counters_of_session(instance, "cancel-stream")["cancelled"] == before["cancelled"] + 1,
             what="the replica's generator stopped")
    assert counters_of_session(instance, "cancel-stream")["running"] == 0
    assert_serving(instance)


def test_deadline_cancels_the_replica_work(instance):
    metadata = [("endpoint", "echo"), ("session-id", "deadline")]
    before = counters_of_session(instance, "deadline")
    stub = echo_pb2_grpc.EchoStub(instance.channel)
    error = status_of(lambda: stub.Say(Req(text="slow", sleep_s=10), timeout=0.5, metadata=metadata))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: counters_of_session(instance, "deadline")["cancelled"] == before["cancelled"] + 1,
             what="the replica's call cancelled at the deadline")
    error = status_of(lambda: list(stub.Count(Req(n=100, sleep_s=0.1), timeout=0.5, metadata=metadata)))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: counters_of_session(instance, "deadline")["cancelled"] == before["cancelled"] + 2,
             what="the replica's generator stopped at the deadline")
    assert_serving(instance)


def counters_of_session(instance, session: str) -> dict[str, int]:
    """The counters of the replica a session sticks to (the session's calls run there)."""
    handle = instance.client.get_handle("echo").options(method_name="counters", session_id=session)
    return handle.remote().result(timeout=10)
