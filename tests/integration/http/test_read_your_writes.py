"""Read your writes: a change call returns only once the HTTP proxy and this process's
routers serve it. Before, 3 of 10 GETs sent right after ``create_endpoint`` got 404."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

import serveplane
from serveplane.exceptions import EndpointNotFoundError
from tests.integration.http.backends import answer_a, answer_b

pytestmark = [pytest.mark.ray]

ROUNDS = 10


@pytest.fixture(scope="module")
def instance(ray_session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = f"ryw-{uuid.uuid4().hex[:8]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, http_options={"port": port})
    client.create_backend("a", answer_a, ray_actor_options={"num_cpus": 0.1})
    client.create_backend("b", answer_b, ray_actor_options={"num_cpus": 0.1})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield client, http
    finally:
        client.shutdown()


def test_every_request_right_after_a_change_sees_it(instance):
    client, http = instance
    for i in range(ROUNDS):
        name, route = f"ep{i}", f"/ep{i}"
        client.create_endpoint(name, backend="a", route=route)
        assert http.get(route).text == "a", f"round {i}: route not served right after create_endpoint"
        client.set_traffic(name, {"b": 1.0})
        assert http.get(route).text == "b", f"round {i}: old traffic served after set_traffic"
        handle = client.get_handle(name)
        assert handle.remote(None).result(timeout=30) == "b"
        client.set_traffic(name, {"a": 1.0})
        assert handle.remote(None).result(timeout=30) == "a", f"round {i}: this process's router was stale"
        client.delete_endpoint(name)
        gone = http.get(route)
        assert gone.status_code == 404, f"round {i}: deleted endpoint still served"
        with pytest.raises(EndpointNotFoundError, match=f"endpoint '{name}' was deleted"):
            handle.remote(None).result(timeout=5)
    confirmation = client.last_confirmation
    assert confirmation is not None and confirmation.proxies == 1 and confirmation.complete


def test_identical_retry_of_create_endpoint_also_waits(instance):
    client, http = instance
    client.create_endpoint("again", backend="a", route="/again")
    client.create_endpoint("again", backend="a", route="/again")  # a retry: a no-op that still confirms
    assert http.get("/again").text == "a"
    client.delete_endpoint("again")


def test_without_the_wait_the_call_returns_before_proxies_confirm(instance):
    client, _ = instance
    client.read_your_writes = False
    try:
        client.last_confirmation = None
        client.create_endpoint("nowait", backend="a", route="/nowait")
        assert client.last_confirmation is None
    finally:
        client.read_your_writes = True
        client.delete_endpoint("nowait")
