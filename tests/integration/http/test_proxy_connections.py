"""What a client can hold on a real proxy: bodies are reserved as they arrive (a declared
Content-Length reserves nothing), a request head must arrive within its deadline, and open
connections are capped per client address and in total, with a clear answer."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.integration.http.backends import Sink
from tests.integration.http.helpers import proxy, statistics, wait_route

pytestmark = [pytest.mark.ray]

MB = 1024 * 1024


def raw_socket(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def read_answer(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the proxy sends until it closes (or ``timeout_s``)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(65536) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_bodies_declared_but_never_sent_hold_nothing_of_the_budget(ray_session):
    """Five sockets declare 100 MiB bodies and send nothing (no key needed, the defaults);
    a 20 MiB upload from another client still gets 200."""
    with proxy() as (client, base):
        port = int(base.rsplit(":", 1)[1])
        client.create_backend("sink", Sink)
        client.create_endpoint("sink", backend="sink", route="/sink", methods=["POST"])
        wait_route(base, "/sink")
        hogs = []
        for _ in range(5):
            sock = raw_socket(port)
            sock.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (100 * MB))
            hogs.append(sock)
        wait_until(lambda: statistics(client)["in_flight"] >= 5, 30, "the five requests admitted")
        try:
            answer = httpx.post(f"{base}/sink", content=b"u" * (20 * MB), timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"bytes": 20 * MB}
            stats = statistics(client)
            assert stats["buffered_body_bytes"] == 0  # the hogs sent nothing: they hold nothing
        finally:
            for sock in hogs:
                sock.close()


@pytest.mark.timeout(120)
def test_request_heads_that_never_finish_are_closed_by_the_default_deadline(ray_session):
    """Connections that send a request line and then one header line now and then are
    answered 408 and closed once the head deadline (default 10 s) passes; other clients are
    served meanwhile."""
    with proxy() as (client, base):
        port = int(base.rsplit(":", 1)[1])
        slow = [raw_socket(port) for _ in range(20)]
        opened = time.monotonic()
        for sock in slow:
            sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n")
        answers: dict[int, bytes] = {}
        while len(answers) < len(slow) and time.monotonic() - opened < 16:
            for i, sock in enumerate(slow):
                if i in answers:
                    continue
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    answers[i] = b""  # closed already
                    continue
                data = read_answer(sock, 0.02)
                if data:
                    answers[i] = data
            assert httpx.get(f"{base}/-/healthz", timeout=5).text == "ok"
            time.sleep(0.5)
        took = time.monotonic() - opened
        assert len(answers) == len(slow), f"{len(slow) - len(answers)} slow heads still open after {took:.0f}s"
        assert 9 < took < 16, took
        assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers.values())
        assert any(b"request_head_timeout_s" in a for a in answers.values())
        for sock in slow:
            sock.close()


@pytest.mark.timeout(120)
def test_a_short_head_deadline_closes_a_silent_connection(ray_session):
    with proxy(request_head_timeout_s=1.0) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        sock = raw_socket(port)
        started = time.monotonic()
        answer = read_answer(sock, 10)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5
        sock.close()
        # a keep-alive connection is given the same deadline for its next head
        with httpx.Client(base_url=base) as keep:
            assert keep.get("/-/healthz").text == "ok"


@pytest.mark.timeout(120)
def test_open_connections_are_capped_per_client_address_and_in_total(ray_session):
    with proxy(max_connections_per_client=4, max_connections=6, request_head_timeout_s=60) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        held = [raw_socket(port) for _ in range(4)]
        wait_until(lambda: statistics(client)["open_connections"] == 4, 10, "four connections counted")
        fifth = raw_socket(port)
        answer = read_answer(fifth, 10)
        assert answer.startswith(b"HTTP/1.1 503") and b"max_connections_per_client=4" in answer
        assert b"Retry-After: 1" in answer
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
            assert other.get(f"{base}/-/healthz").text == "ok"  # another address is not held back
        held += [raw_socket(port, "127.0.0.2") for _ in range(2)]
        wait_until(lambda: statistics(client)["open_connections"] == 6, 10, "six connections counted")
        third = raw_socket(port, "127.0.0.3")
        answer = read_answer(third, 10)
        assert answer.startswith(b"HTTP/1.1 503") and b"max_connections=6" in answer
        for sock in held:
            sock.close()
        wait_until(lambda: statistics(client)["open_connections"] == 0, 10, "connections released")
        assert httpx.get(f"{base}/-/healthz").text == "ok"
        stats = statistics(client)
        assert stats["refused_connections"] == 2
