"""Both request conventions in one cluster, chosen per backend; a native backend may ask for
a real starlette Request over HTTP; connect() in a backend attaches to its own instance."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

import serveplane
from serveplane.exceptions import InvalidConfigError
from tests.integration.http.backends import Classic, Typed, native_echo, whose_instance

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def instance(ray_session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = f"conv-{uuid.uuid4().hex[:8]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, http_options={"port": port})
    opts = {"num_cpus": 0.1}
    client.create_backend("native", native_echo, ray_actor_options=opts)
    client.create_backend("typed", Typed, ray_actor_options=opts)
    client.create_backend("classic", Classic, ray_actor_options=opts, request_convention="classic")
    for name in ("native", "typed", "classic"):
        client.create_endpoint(name, backend=name, route=f"/{name}", methods=["GET", "POST"])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield client, http, ns
    finally:
        client.shutdown()


def test_handle_calls_in_each_convention(instance):
    client, _, _ = instance
    assert client.get_handle("native").remote(1, k=2).result(timeout=30) == {"args": [1], "kwargs": {"k": 2}}
    classic = client.get_handle("classic").options(http_method="post")
    assert classic.remote({"x": 1}, k=2).result(timeout=30) == {
        "type": "HandleRequest", "method": "POST", "q": {"k": 2}, "body": {"x": 1}}


def test_http_calls_in_each_convention(instance):
    _, http, _ = instance
    assert http.get("/native?q=1").json() == {"type": "HTTPRequest", "q": {"q": "1"}}
    assert http.post("/typed?q=1", json={"a": 1}).json() == {
        "type": "starlette.requests.Request", "json": {"a": 1}, "q": {"q": "1"}}
    assert http.post("/classic?q=1", content=b"raw").json() == {
        "type": "Request", "method": "POST", "q": {"q": "1"}, "body": "raw"}


def test_a_classic_backend_refuses_two_positional_arguments(instance):
    client, _, _ = instance
    with pytest.raises(TypeError, match="at most one positional argument"):
        client.get_handle("classic").remote(1, 2).result(timeout=30)


def test_connect_in_a_backend_attaches_to_its_own_instance(instance):
    client, _, ns = instance
    assert ns != "serveplane"
    client.create_backend("whose", whose_instance, ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("whose", backend="whose")
    assert client.get_handle("whose").remote(None).result(timeout=30) == ns
    client.delete_endpoint("whose")
    client.delete_backend("whose")


def test_an_unknown_convention_is_refused(instance):
    client, _, _ = instance
    with pytest.raises(InvalidConfigError, match="request_convention is 'flask'; use 'native'"):
        client.create_backend("bad", native_echo, request_convention="flask")
