"""The request conventions, without Ray: what a classic (1.x) backend's method receives."""

from __future__ import annotations

import asyncio

import cloudpickle
import pytest
from starlette.requests import Request

from serveplane.http.request import HTTPRequest
from serveplane.http.starlette_request import to_starlette, wants_starlette
from serveplane.replica.convention import (
    ClassicBackend,
    HandleRequest,
    RequestConvention,
    classic_request,
    unwrap,
    wrap,
)

HTTP = HTTPRequest(method="POST", path="/api", query_params={"a": "1"},
                   headers={"x-custom": "v", "host": "127.0.0.1:8000"}, body=b'{"k": [1, 2]}')


def test_a_handle_call_becomes_one_request_with_kwargs_as_query_params():
    request = classic_request(({"json_key": 1},), {"arg1": "1", "temp": 1}, "POST", {"X-H": "v"})
    assert isinstance(request, HandleRequest)
    assert dict(request.query_params) == {"arg1": "1", "temp": 1}
    assert request.method == "POST" and request.headers["x-h"] == "v"
    assert asyncio.run(request.body()) == {"json_key": 1} == asyncio.run(request.json())
    empty = classic_request((), {})
    assert empty.method == "GET" and asyncio.run(empty.body()) is None


def test_an_http_call_becomes_a_real_starlette_request():
    request = classic_request((HTTP,), {})
    assert type(request) is Request
    assert request.method == "POST" and request.url.path == "/api"
    assert dict(request.query_params) == {"a": "1"} and request.headers["x-custom"] == "v"
    assert asyncio.run(request.body()) == HTTP.body
    assert asyncio.run(request.json()) == {"k": [1, 2]}


def test_a_request_passed_on_is_handed_over_as_it_is_and_pickles():
    request = to_starlette(HTTP)
    again = cloudpickle.loads(cloudpickle.dumps(request))
    assert type(again) is Request and asyncio.run(again.json()) == {"k": [1, 2]}
    assert classic_request((again,), {}) is again
    handle_request = HandleRequest(3)
    assert classic_request((handle_request,), {}) is handle_request


def test_more_than_one_positional_argument_is_refused_naming_the_rule():
    with pytest.raises(TypeError, match="at most one positional argument .* passed 2"):
        classic_request((1, 2), {})


def test_json_of_a_non_dict_body_says_how_to_read_it():
    with pytest.raises(TypeError, match="read it with 'await request.body\\(\\)'"):
        asyncio.run(HandleRequest(3).json())


def test_the_convention_travels_with_the_code():
    def f(request):
        return request

    assert unwrap(wrap(f, "classic")) == (f, RequestConvention.CLASSIC)
    assert unwrap(wrap(f, RequestConvention.NATIVE)) == (f, RequestConvention.NATIVE)
    assert isinstance(cloudpickle.loads(cloudpickle.dumps(wrap(f, "classic"))), ClassicBackend)


def test_native_methods_ask_for_starlette_by_annotation():
    def typed(request: Request): ...
    def named(request: "Request"): ...
    def plain(request): ...

    class Model:
        def __call__(self, request: Request, extra: int = 0): ...

    assert wants_starlette(typed) and wants_starlette(named) and wants_starlette(Model())
    assert not wants_starlette(plain) and not wants_starlette(len)
