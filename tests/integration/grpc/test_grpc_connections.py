"""What one connection can hold on the gRPC proxy: a connection that never finishes its
handshake is closed after ``request_head_timeout_s``; the proxy keeps serving others."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.grpc import echo_pb2_grpc
from tests.integration.grpc.conftest import grpc_instance
from tests.integration.grpc.test_grpc_proxy import ECHO, Req

pytestmark = [pytest.mark.ray]


def closed_within(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the peer closed the socket (reading and dropping what it sends), or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout_s:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


@pytest.mark.timeout(120)
def test_a_connection_that_never_finishes_its_handshake_is_closed(ray_session):
    from tests.integration.grpc.backends import Echo

    with grpc_instance(request_head_timeout_s=1.0) as inst:
        inst.client.create_backend("echo:a", Echo, "a")
        inst.client.create_endpoint("echo", backend="echo:a")
        port = int(inst.address.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        partial = socket.create_connection(("127.0.0.1", port), timeout=10)
        partial.sendall(b"PRI * HTTP/2.0\r\n")  # half the preface, then nothing
        for sock in (silent, partial):
            took = closed_within(sock, 10)
            assert took is not None and took < 6, took
            sock.close()
        stub = echo_pb2_grpc.EchoStub(inst.channel)
        assert stub.Say(Req(text="still"), timeout=20, metadata=ECHO).text == "still"
