"""Endpoint rules: each refused before anything changes, with the value and the rule named."""

from __future__ import annotations

import pytest

from serveplane.endpoint_state import EndpointState
from serveplane.exceptions import BackendNotFoundError, DuplicateError, EndpointNotFoundError, InvalidConfigError


@pytest.fixture
def state() -> EndpointState:
    known = {"a", "b", "c"}
    s = EndpointState(lambda tag: tag in known)
    record = s.validate_create("ep", "a", "/ep", ["GET", "post"], None, None, 0.0, None)
    assert record is not None
    s.put(record)
    return s


def test_create_normalizes_methods_and_route(state):
    assert state.get("ep").methods == ("GET", "POST")
    record = state.validate_create("ep2", "b", "/x/", None, "least_loaded", 4, 0.01, None)
    assert record.route == "/x" and record.methods == ("GET",) and record.router == "least_loaded"


def test_identical_recreation_is_a_noop(state):
    assert state.validate_create("ep", "a", "/ep", ["GET", "POST"], None, None, 0.0, None) is None


@pytest.mark.parametrize("args, error, match", [
    (("ep", "b", "/ep", None), DuplicateError, "endpoint 'ep' already exists"),
    (("ep2", "b", "/ep", None), DuplicateError, "route '/ep' is already used by endpoint 'ep'"),
    (("ep2", "b", "noslash", None), InvalidConfigError, "must start with '/'"),
    (("ep2", "zzz", "/z", None), BackendNotFoundError, "backend 'zzz' used by endpoint 'ep2' does not exist"),
    (("ep2", "b", "/z", ["FETCH"]), InvalidConfigError, "http method 'FETCH' is not supported"),
    (("bad name", "b", "/z", None), InvalidConfigError, "endpoint name 'bad name' is invalid"),
], ids=["dup-name", "dup-route", "route-slash", "unknown-backend", "bad-method", "bad-name"])
def test_create_rules(state, args, error, match):
    name, backend, route, methods = args
    with pytest.raises(error, match=match):
        state.validate_create(name, backend, route, methods, None, None, 0.0, None)
    assert state.names() == ["ep"]


@pytest.mark.parametrize("traffic, match", [
    ({"a": 0.5, "b": 0.4}, "sum to 0.9; they must sum to 1"),
    ({"a": 1.5, "b": -0.5}, "weight for backend 'b' of endpoint 'ep' is -0.5; weights must be >= 0"),
    ({}, "must be a non-empty dict"),
    ({"a": float("nan")}, "must be a finite number"),
], ids=["sum", "negative", "empty", "nan"])
def test_traffic_rules(state, traffic, match):
    with pytest.raises(InvalidConfigError, match=match):
        state.validate_traffic("ep", traffic)
    assert state.get("ep").traffic == {"a": 1.0}


def test_traffic_to_unknown_backend_and_endpoint(state):
    with pytest.raises(BackendNotFoundError, match="backend 'nope'"):
        state.validate_traffic("ep", {"a": 0.5, "nope": 0.5})
    with pytest.raises(EndpointNotFoundError, match="endpoint 'nope' does not exist"):
        state.validate_traffic("nope", {"a": 1})


def test_shadow_rules_and_removal(state):
    for bad in (-0.1, 1.1, float("inf"), "x"):
        with pytest.raises(InvalidConfigError, match="must lie in \\[0, 1\\]"):
            state.validate_shadow("ep", "b", bad)
    state.put(state.validate_shadow("ep", "b", 0.2))
    assert state.get("ep").shadows == {"b": 0.2}
    assert state.backends_in_use("b") == ["ep"]
    state.put(state.validate_shadow("ep", "b", 0))
    assert state.get("ep").shadows == {}
    assert state.backends_in_use("b") == []


def test_unknown_router_name(state):
    with pytest.raises(InvalidConfigError, match="router 'fastest' is unknown"):
        state.validate_router_change("ep", "fastest", None)


def test_checkpoint_round_trip(state):
    state.put(state.validate_traffic("ep", {"a": 0.25, "b": 0.75}))
    copy = EndpointState(lambda tag: True)
    copy.load_checkpoint(state.to_checkpoint())
    assert copy.records() == state.records()
    assert copy.routes() == {"/ep": ("ep", ("GET", "POST"))}


def test_endpoint_names_may_hold_slashes_as_in_ray_serve_1x():
    from serveplane.endpoint_state.state import validate_name

    assert validate_name("endpoint", "delete_endpoint/delete-endpoint") == "delete_endpoint/delete-endpoint"


def test_a_backend_tag_with_a_slash_is_refused_with_how_to_migrate():
    from serveplane.endpoint_state.state import validate_name
    from serveplane.exceptions import InvalidConfigError

    with pytest.raises(InvalidConfigError, match=r"backend name 'models/a' is invalid.*Ray Serve 1.x "
                                                 r"allowed '/'.*rename it, e.g. 'models-a'"):
        validate_name("backend", "models/a")
