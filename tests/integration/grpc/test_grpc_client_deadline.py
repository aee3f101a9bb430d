"""The client's gRPC deadline is the request's deadline, longer or shorter than the proxy's
``request_timeout_s``, which only bounds a call that sets none (``GRPCOptions``, README)."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.integration.grpc import echo_pb2_grpc
from tests.integration.grpc.conftest import grpc_instance
from tests.integration.grpc.test_grpc_proxy import ECHO, Req, status_of

pytestmark = [pytest.mark.ray]

REQUEST_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def short(ray_session):
    from tests.integration.grpc.backends import Echo

    with grpc_instance(request_timeout_s=REQUEST_TIMEOUT_S) as inst:
        inst.client.create_backend("echo:a", Echo, "a")
        inst.client.create_endpoint("echo", backend="echo:a")
        yield inst


def test_a_stream_outlives_request_timeout_s_when_the_client_deadline_allows(short):
    stub = echo_pb2_grpc.EchoStub(short.channel)
    started = time.monotonic()
    chunks = [c.index for c in stub.Count(Req(text="long", n=5, sleep_s=0.5), timeout=30, metadata=ECHO)]
    took = time.monotonic() - started
    assert chunks == [0, 1, 2, 3, 4] and took > 2 * REQUEST_TIMEOUT_S, took


def test_a_unary_call_outlives_request_timeout_s_when_the_client_deadline_allows(short):
    reply = echo_pb2_grpc.EchoStub(short.channel).Say(Req(text="slow", sleep_s=2.0), timeout=30, metadata=ECHO)
    assert reply.text == "slow"


def test_a_call_without_a_deadline_is_bounded_by_request_timeout_s(short):
    stub = echo_pb2_grpc.EchoStub(short.channel)
    error = status_of(lambda: list(stub.Count(Req(n=5, sleep_s=0.5), metadata=ECHO)))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_client_deadline_shorter_than_request_timeout_s_wins(short):
    stub = echo_pb2_grpc.EchoStub(short.channel)
    started = time.monotonic()
    error = status_of(lambda: stub.Say(Req(sleep_s=5.0), timeout=0.3, metadata=ECHO))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < REQUEST_TIMEOUT_S
