"""What an HTTP request may call: the rules, the replica's resolution, and the router
carrying "this came over HTTP" on every path a request can take (no Ray)."""

from __future__ import annotations

import asyncio

import cloudpickle
import pytest

import serveplane
from serveplane import BackendConfig
from serveplane.exceptions import InvalidConfigError, MethodNotExposedError
from serveplane.records import RequestMetadata
from serveplane.replica.actor import ReplicaActor
from serveplane.router import Handle, StaticSource
from serveplane.router.router import EndpointRouter
from tests.unit.router.fakes import FakeTransport, publish


class Model:
    def __call__(self, request):
        return "call"

    def predict(self, request):
        return "predict"

    @serveplane.http_method
    def marked(self, request):
        return "marked"

    def internal(self, request):
        return "internal"

    def reconfigure(self, config):
        return "reconfigured"

    def check_health(self):
        return None

    def _private(self, request):
        return "private"


def replica(func_or_class=Model, **config) -> ReplicaActor:
    return ReplicaActor("b", "r0", cloudpickle.dumps(func_or_class), cloudpickle.dumps(((), {})),
                        BackendConfig(**config).model_dump(), "v1")


def call(actor: ReplicaActor, method: str, http: bool):
    meta = RequestMetadata("id", "ep", method, http=http)
    return asyncio.run(actor.handle_request(meta, "request"))


@pytest.mark.parametrize("method, answer", [
    ("__call__", "call"), ("predict", "predict"), ("marked", "marked"),
], ids=["call", "listed-in-config", "marked"])
def test_http_reaches_exposed_methods(method, answer):
    assert call(replica(http_methods=["predict"]), method, http=True) == answer


@pytest.mark.parametrize("method", ["internal", "reconfigure", "check_health", "_private", "__init__",
                                    "no_such_method", "predict", "a b", "x" * 500],
                         ids=["public-not-exposed", "reconfigure", "check-health", "private", "dunder",
                              "missing", "not-listed", "not-an-identifier", "long"])
def test_http_never_reaches_anything_else_and_says_so_alike(method):
    with pytest.raises(MethodNotExposedError) as caught:
        call(replica(), method, http=True)
    assert "is not exposed over HTTP; a backend exposes __call__, the methods in BackendConfig" in str(caught.value)
    assert len(str(caught.value)) < 300  # a long name is cut, never echoed whole


def test_handles_still_call_any_public_method_and_functions_only_call():
    actor = replica()
    assert call(actor, "internal", http=False) == "internal"
    assert call(actor, "reconfigure", http=False) == "reconfigured"

    def function(request):
        return "function"

    assert call(replica(function), "__call__", http=True) == "function"
    with pytest.raises(MethodNotExposedError):
        call(replica(function), "predict", http=True)


def test_http_methods_change_in_place_on_reconfigure():
    actor = replica()
    with pytest.raises(MethodNotExposedError):
        call(actor, "predict", http=True)
    asyncio.run(actor.reconfigure(BackendConfig(http_methods=["predict"]).model_dump(), "cv2"))
    assert call(actor, "predict", http=True) == "predict"


@pytest.mark.parametrize("methods, match", [
    (["reconfigure"], "http_methods names 'reconfigure'; reconfigure is never exposed over HTTP"),
    (["check_health"], "check_health is never exposed over HTTP"),
    (["_secret"], "private methods \\(a leading underscore\\) are never exposed over HTTP"),
    (["a-b"], "a method name is a Python identifier"),
    ("predict", "Input should be a valid list"),
    ([""], "method names are non-empty strings"),
], ids=["reconfigure", "check-health", "private", "not-identifier", "a-string", "empty"])
def test_http_methods_config_refuses_what_is_never_exposed(methods, match):
    with pytest.raises(ValueError, match=match):
        BackendConfig(http_methods=methods)


def test_the_mark_refuses_what_is_never_exposed():
    def reconfigure(self, config):
        pass

    def _hidden(self):
        pass

    with pytest.raises(InvalidConfigError, match="cannot mark 'reconfigure': reconfigure is never exposed"):
        serveplane.http_method(reconfigure)
    with pytest.raises(InvalidConfigError, match="cannot mark '_hidden': private methods"):
        serveplane.http_method(_hidden)


def test_http_methods_unset_keeps_existing_config_versions():
    from serveplane.backend_state.record import config_version

    assert config_version(BackendConfig()) != config_version(BackendConfig(http_methods=["predict"]))
    # the hash of a config without http_methods is what it was before the field existed
    from serveplane.backend_state.record import content_hash

    before = content_hash({"user_config": None, "max_batch_size": None, "batch_wait_timeout": 0.0,
                           "max_concurrent_queries": 100})
    assert config_version(BackendConfig()) == before


@pytest.mark.parametrize("fields", [{}, {"batch_size": 4, "batch_timeout_s": 0.01}, {"shadows": {"s": 1.0}}],
                         ids=["direct", "router-batched", "shadowed"])
def test_the_router_marks_http_requests_on_every_path(fields):
    source = StaticSource()
    transport = FakeTransport(auto=lambda ref: [(True, None)] * len(ref.args[0])
                              if ref.meta.method_name == "__call__" and isinstance(ref.args[0], list) else None)
    router = EndpointRouter("ep", source, transport=transport)
    publish(source, traffic={"a": 1.0}, **fields)
    handle = Handle(router)
    responses = [handle.options(http=True).remote("x")]
    if "batch_size" in fields:
        responses += [handle.options(http=True).remote("x") for _ in range(3)]
    for response in responses:
        response.result(timeout=5)
    assert transport.calls and all(call.meta.http for call in transport.calls)
    handle.remote("y").result(timeout=5)
    assert not transport.calls[-1].meta.http  # a handle call is never marked, nor batched with one
