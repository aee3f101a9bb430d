"""Replica-choice policies and backend picking, without Ray."""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serveplane.records import ReplicaInfo
from serveplane.router.policies import (
    ConsistentHashRouter,
    LeastLoadedRouter,
    PowerOfTwoRouter,
    RequestInfo,
    RoundRobinRouter,
    key_fraction,
    rendezvous_pick,
    rendezvous_rank,
    weighted_pick,
)


def replicas(n: int) -> list[ReplicaInfo]:
    return [ReplicaInfo("b", f"r{i}", f"serveplane:b#r{i}", None, 10) for i in range(n)]


def req(key=None):
    return RequestInfo("ep", "__call__", key)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 12), leaving=st.integers(0, 11),
       keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True))
def test_rendezvous_moves_only_the_departed_replicas_keys(n, leaving, keys):
    before = replicas(n)
    gone = before[leaving % n]
    after = [r for r in before if r != gone]
    for key in keys:
        old, new = rendezvous_rank(key, before)[0], rendezvous_rank(key, after)[0]
        if old != gone:
            assert new == old, f"key {key!r} moved although its replica stayed"


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), keys=st.lists(st.text(min_size=1), min_size=1, max_size=40, unique=True))
def test_a_joining_replica_takes_keys_only_for_itself(n, keys):
    before = replicas(n)
    after = before + [ReplicaInfo("b", "new", "serveplane:b#new", None, 10)]
    for key in keys:
        new = rendezvous_rank(key, after)[0]
        assert new == rendezvous_rank(key, before)[0] or new.replica_tag == "new"


def test_weighted_pick_follows_weights_and_keys_are_deterministic():
    traffic = {"a": 0.2, "b": 0.8, "c": 0.0}
    rng = random.Random(3)
    counts = collections.Counter(weighted_pick(traffic, rng.random()) for _ in range(20_000))
    assert counts["c"] == 0 and 0.18 < counts["a"] / 20_000 < 0.22
    assert {weighted_pick(traffic, key_fraction("user-7")) for _ in range(10)} == {
        weighted_pick(traffic, key_fraction("user-7"))}


def test_round_robin_least_loaded_power_of_two():
    rs = replicas(3)
    rr = RoundRobinRouter()
    assert [rr.choose(rs, req()).replica_tag for _ in range(6)] == ["r0", "r1", "r2", "r0", "r1", "r2"]
    load = {"serveplane:b#r0": 5, "serveplane:b#r1": 0, "serveplane:b#r2": 3}
    ll = LeastLoadedRouter()
    ll.load = lambda r: load[r.actor_name]
    assert {ll.choose(rs, req()).replica_tag for _ in range(20)} == {"r1"}
    p2 = PowerOfTwoRouter()
    p2.load = lambda r: load[r.actor_name]
    assert "r0" not in {p2.choose(rs, req()).replica_tag for _ in range(50)}  # never the busiest of 2


def test_consistent_hash_uses_the_key_and_falls_back_without_one():
    rs = replicas(4)
    ch = ConsistentHashRouter()
    ch.load = lambda r: 0 if r.replica_tag == "r2" else 9
    assert len({ch.choose(rs, req("session-1")).replica_tag for _ in range(10)}) == 1
    assert {ch.choose(rs, req()).replica_tag for _ in range(10)} == {"r2"}


def test_user_router_must_implement_choose():
    from serveplane.router import Router

    with pytest.raises(NotImplementedError, match="must implement choose"):
        Router().choose(replicas(1), req())


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 10), leaving=st.integers(0, 9),
       keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True))
def test_consistent_hash_policy_moves_only_the_departed_replicas_keys(n, leaving, keys):
    policy = ConsistentHashRouter()
    before = replicas(n)
    gone = before[leaving % n]
    after = [r for r in before if r != gone]
    for key in keys:
        old = policy.choose(before, req(key))
        assert old == rendezvous_pick(key, before) == rendezvous_rank(key, before)[0]
        new = policy.choose(after, req(key))
        assert new == old or old == gone
