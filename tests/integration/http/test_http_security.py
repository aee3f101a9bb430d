"""The closed HTTP surface with real requests: exposed methods only, 500s that carry an id
and nothing else, API keys, rate limits, and a proxy whose load and memory are bounded."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.http.backends import Exposed, Fails, Model, Sink, Slow
from tests.integration.http.helpers import proxy, statistics, wait_route, worker_log

pytestmark = [pytest.mark.ray]

K1, K2, K3 = "key-one-0123456789abcdef", "key-two-0123456789abcdef", "key-three-0123456789abcd"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        time.sleep(0.05)
    return value


def test_call_method_header_reaches_only_exposed_methods(ray_session):
    with proxy() as (client, base):
        client.create_backend("e", Exposed, config={"http_methods": ["predict"]})
        client.create_endpoint("ep", backend="e", route="/ep")
        client.create_endpoint("batched", backend="e", route="/batched", batch_size=4, batch_timeout_s=0.005)
        wait_route(base, "/batched")

        def get(method: str | None, route: str = "/ep") -> httpx.Response:
            return httpx.get(f"{base}{route}", headers={"X-SERVE-CALL-METHOD": method} if method else {},
                             timeout=30)

        assert [get(m).text for m in (None, "__call__", "predict", "marked")] == \
            ["call", "call", "predict", "marked"]
        for method in ("internal", "reconfigure", "check_health", "_private", "__init__", "nope", "a.b"):
            for route in ("/ep", "/batched"):
                r = get(method, route)
                assert r.status_code == 404, (method, route, r.text)
                assert r.json()["error"].startswith(f"method {method!r} is not exposed over HTTP; a backend "
                                                    "exposes __call__, the methods in BackendConfig")
        # handles are not HTTP: any public method
        assert client.get_handle("ep").options(method_name="internal").remote(None).result(timeout=30) == "internal"
        # exposing a method is an in-place config change
        client.update_backend_config("e", {"http_methods": ["predict", "internal"]})
        assert get("internal").text == "internal" and get("internal", "/batched").text == "internal"


def test_a_500_carries_an_error_id_only_and_the_log_keeps_the_error(ray_session):
    with proxy() as (client, base):
        client.create_backend("f", Fails)
        client.create_endpoint("f", backend="f", route="/f")
        wait_route(base, "/f")
        r = httpx.get(f"{base}/f", params={"n": "42"}, timeout=30)
        body = r.json()
        assert r.status_code == 500 and set(body) == {"error", "error_id"}
        assert "secret detail" not in r.text and "ValueError" not in r.text
        assert body["error"] == f"internal error; the server logged it as error {body['error_id']}"
        pid = statistics(client)["pid"]
        wait_for(lambda: f"error {body['error_id']} in endpoint 'f': ValueError: secret detail 42"
                 in worker_log(pid), 20, "the error logged under its id")
    with proxy(debug_errors=True) as (client, base):
        client.create_backend("f", Fails)
        client.create_endpoint("f", backend="f", route="/f")
        wait_route(base, "/f")
        r = httpx.get(f"{base}/f", params={"n": "7"}, timeout=30)
        assert r.status_code == 500 and r.json()["detail"] == "ValueError: secret detail 7"


def test_api_keys_guard_everything_but_healthz_and_the_key_file_is_re_read(ray_session, tmp_path):
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"# one key per line\n{K2}\n")
    with proxy(api_keys=[K1], api_keys_file=str(key_file)) as (client, base):
        client.create_backend("m", Model)
        client.create_endpoint("m", backend="m", route="/m")
        wait_route(base, "/m", headers=bearer(K1))
        assert httpx.get(f"{base}/-/healthz").text == "ok"
        for path in ("/m", "/-/routes", "/-/metrics", "/no-such-path"):
            for headers in ({}, bearer("not-a-key-0123456789"), {"Authorization": f"Basic {K1}"}):
                r = httpx.get(f"{base}{path}", headers=headers, timeout=30)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json() == {"error": "missing or invalid API key; send the header "
                                             "Authorization: Bearer <key>"}
        for key in (K1, K2):
            assert httpx.get(f"{base}/m", params={"q": "x"}, headers=bearer(key), timeout=30).json()["q"] == "x"
            assert httpx.get(f"{base}/-/routes", headers=bearer(key)).json()["/m"]["endpoint"] == "m"
            assert httpx.get(f"{base}/-/metrics", headers=bearer(key), timeout=30).status_code == 200
        assert httpx.get(f"{base}/no-such-path", headers=bearer(K1)).status_code == 404
        key_file.write_text(f"{K3}\n")  # K2 revoked, K3 issued
        wait_for(lambda: httpx.get(f"{base}/m", headers=bearer(K2), timeout=30).status_code == 401, 10,
                 "a key removed from the file refused")
        assert httpx.get(f"{base}/m", headers=bearer(K3), timeout=30).status_code == 200
        assert httpx.get(f"{base}/m", headers=bearer(K1), timeout=30).status_code == 200


def test_rate_limits_are_per_key_and_say_when_to_retry(ray_session):
    with proxy(api_keys=[K1, K2, K3], rate_limit_rps=0.5, rate_limit_burst=2) as (client, base):
        client.create_backend("m", Model)
        client.create_endpoint("m", backend="m", route="/m")
        wait_for(lambda: httpx.get(f"{base}/m", headers=bearer(K3), timeout=30).status_code == 200, 20,
                 "the route served")
        assert [httpx.get(f"{base}/m", headers=bearer(K1), timeout=30).status_code for _ in range(2)] == [200, 200]
        r = httpx.get(f"{base}/m", headers=bearer(K1), timeout=30)
        assert r.status_code == 429 and int(r.headers["retry-after"]) in (1, 2)
        assert "rate limit of 0.5 requests/s exceeded; retry after" in r.json()["error"]
        assert httpx.get(f"{base}/-/routes", headers=bearer(K1)).status_code == 429  # every path counts
        assert httpx.get(f"{base}/m", headers=bearer(K2), timeout=30).status_code == 200  # another key
        assert httpx.get(f"{base}/-/healthz").status_code == 200


def raw_request(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + body)
    return sock


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else -1


def post_head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def test_the_proxy_bounds_requests_in_flight_body_time_and_body_memory(ray_session):
    options = {"max_concurrent_requests": 2, "body_read_timeout_s": 2.0, "max_body_bytes": 1_000_000,
               "max_buffered_body_bytes": 1_000_000, "request_timeout_s": 20}
    with proxy(**options) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        client.create_backend("slow", Slow)
        client.create_backend("sink", Sink)
        client.create_endpoint("slow", backend="slow", route="/slow")
        client.create_endpoint("sink", backend="sink", route="/sink", methods=["POST"])
        wait_route(base, "/sink")

        # 1. in flight: two slow calls fill the proxy; the third is refused at once
        with ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(httpx.get, f"{base}/slow", params={"s": "3"}, timeout=30) for _ in range(2)]
            wait_for(lambda: statistics(client)["in_flight"] == 2, 20, "two requests in flight")
            started = time.monotonic()
            r = httpx.get(f"{base}/slow", params={"s": "0"}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and time.monotonic() - started < 1
            assert r.json()["error"] == "the proxy is at max_concurrent_requests=2; retry after 1s"
            assert httpx.get(f"{base}/-/healthz").text == "ok"  # health checks are never refused
            assert [f.result().status_code for f in slow] == [200, 200]

        # 2. a body that does not arrive in time: 408, and its slot and memory come back
        stalled = raw_request(port, post_head("/sink", 1000), b"x" * 10)
        started = time.monotonic()
        assert read_status(stalled) == 408 and 1.5 < time.monotonic() - started < 10

        # 3. bodies held at once: one stalled upload holds the 800 kB it sent of the 1 MB (what
        # arrived, not what it declares); the next is 503
        holder = raw_request(port, post_head("/sink", 900_000), b"x" * 800_000)
        wait_for(lambda: statistics(client)["buffered_body_bytes"] == 800_000, 10, "the body reserved")
        r = httpx.post(f"{base}/sink", content=b"y" * 300_000, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "max_buffered_body_bytes=1000000" in r.json()["error"]
        assert read_status(holder) == 408
        assert httpx.post(f"{base}/sink", content=b"y" * 300_000, timeout=30).json() == {"bytes": 300_000}
        assert httpx.post(f"{base}/sink", content=b"y" * 1_000_001, timeout=30).status_code == 413

        stats = statistics(client)
        assert stats["in_flight"] == 0 and stats["buffered_body_bytes"] == 0
        assert stats["peak_in_flight"] == 2 and stats["peak_buffered_body_bytes"] <= 1_000_000
