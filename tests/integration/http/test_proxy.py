"""Real HTTP against the proxy on 127.0.0.1."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest

import serveplane
from tests.integration.http.backends import Model, Slow, starlette_response

pytestmark = [pytest.mark.ray]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_instance(ray_session):
    ns = f"h-{uuid.uuid4().hex[:8]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns,
                              http_options={"port": port, "request_timeout_s": 1.5,
                                            "max_body_bytes": 1024})
    try:
        yield client, f"http://127.0.0.1:{port}"
    finally:
        client.shutdown()


def wait_route(base: str, route: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while route not in httpx.get(f"{base}/-/routes").json():
        assert time.monotonic() < deadline, f"route {route} never appeared"
        time.sleep(0.05)


def test_routes_methods_and_bodies(http_instance):
    client, base = http_instance
    assert client.http_urls == [base]
    client.create_backend("m", Model)
    client.create_endpoint("model", backend="m", route="/model", methods=["GET", "POST"])
    wait_route(base, "/model")
    assert httpx.get(f"{base}/-/healthz").text == "ok"
    assert httpx.get(f"{base}/model", params={"q": "hi"}).json() == {"q": "hi", "path": "/model"}
    assert httpx.post(f"{base}/model/sub", json={"values": [1, 2, 3]}).json() == {"sum": 6, "path": "/model/sub"}
    assert httpx.get(f"{base}/model", headers={"X-SERVE-CALL-METHOD": "text"}).text == "plain text"
    assert httpx.get(f"{base}/model", headers={"X-SERVE-CALL-METHOD": "raw"}).content == b"\x00\x01"
    r = httpx.get(f"{base}/model", headers={"X-SERVE-CALL-METHOD": "session", "X-SERVE-SESSION-ID": "s1"})
    assert r.json() == {"session": "s1"}
    assert httpx.get(f"{base}/nope").status_code == 404
    r = httpx.put(f"{base}/model")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_bad_input_never_takes_the_proxy_down(http_instance):
    client, base = http_instance
    client.create_backend("m", Model)
    client.create_backend("slow", Slow)
    client.create_backend("s", starlette_response)
    client.create_endpoint("model", backend="m", route="/model", methods=["POST"])
    client.create_endpoint("slow", backend="slow", route="/slow")
    client.create_endpoint("resp", backend="s", route="/resp")
    wait_route(base, "/resp")
    r = httpx.post(f"{base}/model", content=b"x" * 4096)
    assert r.status_code == 413 and "max_body_bytes=1024" in r.text
    r = httpx.post(f"{base}/model", content=b"{not json")
    assert r.status_code == 500 and r.json()["error_id"] and "JSON" not in r.text  # an id only
    r = httpx.get(f"{base}/slow", params={"s": "5"}, timeout=10)
    assert r.status_code == 504
    r = httpx.get(f"{base}/resp")
    assert r.status_code == 418 and r.text == "teapot"
    assert httpx.get(f"{base}/resp", params={"stream": "1"}).text == "abc"
    # still serving after all of that
    assert httpx.post(f"{base}/model", json={"values": [2]}).json()["sum"] == 2


def test_metrics_endpoint_and_bad_http_options(http_instance):
    client, base = http_instance
    client.create_backend("m", Model)
    client.create_endpoint("model", backend="m", route="/model")
    wait_route(base, "/model")
    for _ in range(5):
        httpx.get(f"{base}/model")
    text = httpx.get(f"{base}/-/metrics").text
    assert "serveplane_replica_requests_total" in text and 'endpoint="model"' in text
    deadline = time.monotonic() + 15  # the proxy's router reports twice a second at most
    while 'serveplane_requests_total{backend="m",endpoint="model"} 5.0' not in text:
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
        text = httpx.get(f"{base}/-/metrics").text
    assert 'serveplane_request_latency_seconds_bucket{backend="m",endpoint="model",le="+Inf"} 5.0' in text
    with pytest.raises(serveplane.InvalidConfigError, match="location"):
        serveplane.start(namespace="x", http_options={"location": "Everywhere"})
