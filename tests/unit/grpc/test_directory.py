"""Which endpoint an RPC goes to (serveplane/grpc/directory.py), fed by a fake long-poll."""

from __future__ import annotations

import itertools
from typing import Any, Callable

import pytest

from serveplane.config import BackendConfig
from serveplane.grpc.directory import EndpointDirectory, Unresolved
from serveplane.records import BackendInfo, EndpointInfo


class FakeLongPoll:
    def __init__(self) -> None:
        self.subs: dict[str, tuple[int, Callable[[Any], None]]] = {}
        self.ids = itertools.count()

    def subscribe(self, key: str, callback: Callable[[Any], None]) -> int:
        assert key not in self.subs, f"{key} followed twice"
        token = next(self.ids)
        self.subs[key] = (token, callback)
        return token

    def unsubscribe(self, token: int) -> None:
        (key,) = [k for k, (t, _) in self.subs.items() if t == token]
        del self.subs[key]

    def publish(self, key: str, value: Any) -> None:
        self.subs[key][1](value)


def endpoint(name: str, **traffic: float) -> EndpointInfo:
    return EndpointInfo(name=name, route=None, methods=("GET",), traffic=dict(traffic))


def backend(tag: str, *methods: str) -> BackendInfo:
    return BackendInfo(backend=tag, config=BackendConfig(), method_names=tuple(methods))


@pytest.fixture
def world() -> tuple[FakeLongPoll, EndpointDirectory]:
    poll = FakeLongPoll()
    directory = EndpointDirectory(poll.subscribe, poll.unsubscribe)
    directory.start()
    poll.publish("endpoints", ("a", "b"))
    poll.publish("endpoint:a", endpoint("a", a1=0.9, a2=0.1))
    poll.publish("endpoint:b", endpoint("b", b1=1.0, a2=0.0))   # a2 at weight 0: not b's
    poll.publish("backend_config:a1", backend("a1", "Predict", "__call__"))
    poll.publish("backend_config:a2", backend("a2", "Predict", "Explain"))
    poll.publish("backend_config:b1", backend("b1", "Embed", "__call__"))
    return poll, directory


def test_follows_exactly_the_keys_it_needs(world):
    poll, directory = world
    assert set(poll.subs) == {"endpoints", "endpoint:a", "endpoint:b", "backend_config:a1",
                              "backend_config:a2", "backend_config:b1"}
    assert directory.settled
    poll.publish("endpoints", ("b",))                       # a deleted
    assert set(poll.subs) == {"endpoints", "endpoint:b", "backend_config:b1"}
    poll.publish("endpoints", ("b", "c"))                   # c created: unknown until it arrives
    assert not directory.settled
    poll.publish("endpoint:c", endpoint("c", c1=1.0))
    assert not directory.settled and "backend_config:c1" in poll.subs
    poll.publish("backend_config:c1", backend("c1", "Predict"))
    assert directory.settled and directory.resolve(None, "Predict") == "c"


@pytest.mark.parametrize("named, method, expected", [
    (None, "Predict", "a"),       # only a's backends define it
    (None, "Explain", "a"),       # a2 defines it (weight 0.1 counts)
    (None, "Embed", "b"),
    ("a", "Predict", "a"),
    ("b", "Embed", "b"),
    ("a", "Explain", "a"),        # one backend of the split defines it
], ids=["by-method", "by-minor-backend", "other-endpoint", "named", "named-b", "named-split"])
def test_resolves(world, named, method, expected):
    assert world[1].resolve(named, method) == expected


@pytest.mark.parametrize("named, method, code, match", [
    ("nope", "Predict", "NOT_FOUND", "no endpoint named 'nope'"),
    ("b", "Predict", "NOT_FOUND", "endpoint 'b' has no method 'Predict'"),
    (None, "Missing", "NOT_FOUND", "no endpoint serves method 'Missing'"),
    (None, "__call__", "FAILED_PRECONDITION", "served by endpoints a, b"),
], ids=["unknown-endpoint", "method-not-on-named", "no-endpoint-defines", "ambiguous"])
def test_refuses(world, named, method, code, match):
    with pytest.raises(Unresolved, match=match) as info:
        world[1].resolve(named, method)
    assert info.value.code == code


def test_unknown_values_and_unrecorded_methods():
    poll = FakeLongPoll()
    directory = EndpointDirectory(poll.subscribe, poll.unsubscribe)
    directory.start()
    with pytest.raises(Unresolved, match="no endpoint named 'a'"):
        directory.resolve("a", "Predict")                  # nothing heard yet
    poll.publish("endpoints", ("a",))
    assert directory.resolve("a", "Predict") == "a"        # traffic not yet known: the router decides
    poll.publish("endpoint:a", endpoint("a", old=1.0))
    poll.publish("backend_config:old", BackendInfo(backend="old", config=BackendConfig()))
    assert directory.settled
    assert directory.resolve("a", "Anything") == "a"       # recorded before method names: when named
    with pytest.raises(Unresolved, match="no endpoint serves"):
        directory.resolve(None, "Anything")                # ... and never chosen by method
    poll.publish("endpoint:a", None)                       # deleted (before 'endpoints' says so)
    with pytest.raises(Unresolved, match="has no method|no endpoint serves"):
        directory.resolve(None, "Anything")
    directory.close()
    assert poll.subs == {}
