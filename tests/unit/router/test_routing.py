"""Where requests go: weighted split, keys, sessions, policies, shadows, fanout; no Ray."""

from __future__ import annotations

import asyncio
import collections
import pickle

import cloudpickle
import pytest

from serveplane.context import current_session_id
from serveplane.records import keys
from serveplane.router import Handle, QuorumError, Router, StaticSource
from serveplane.router.router import EndpointRouter
from tests.unit.router.fakes import FakeTransport, endpoint, publish, replica


def echo(ref):
    return {"replica": ref.replica.actor_name, "backend": ref.replica.backend, "x": ref.args[0] if ref.args else None,
            "session": ref.meta.session_id}


def make(auto=echo, **publish_args):
    source = StaticSource()
    transport = FakeTransport(auto=auto)
    router = EndpointRouter("ep", source, transport=transport)
    publish(source, **publish_args)
    return source, transport, router, Handle(router)


def test_weighted_split_follows_the_weights_and_changes_at_once():
    source, transport, router, h = make(traffic={"a": 0.2, "b": 0.8}, replicas={"a": 1, "b": 1})
    counts = collections.Counter(h.remote(i).result(timeout=1)["backend"] for i in range(4000))
    assert 0.17 < counts["a"] / 4000 < 0.23, counts
    source.set(keys.endpoint("ep"), endpoint("ep", {"a": 0.0, "b": 1.0}))
    assert {h.remote(i).result(timeout=1)["backend"] for i in range(50)} == {"b"}
    assert repr(router) == "<Router ep [backends: a=0 b=1 | replicas: 2 running | in flight: 0 | queued: 0]>"


def test_shard_key_picks_the_same_backend_in_every_router():
    traffic = {"a": 0.5, "b": 0.5}
    chosen = []
    for _ in range(2):  # two routers stand for two processes
        _, _, _, h = make(traffic=traffic, replicas={"a": 1, "b": 1})
        chosen.append({key: h.options(shard_key=key).remote(0).result(timeout=1)["backend"]
                       for key in (f"user-{i}" for i in range(40))})
    assert chosen[0] == chosen[1]
    assert set(chosen[0].values()) == {"a", "b"}


def test_consistent_hash_keeps_a_shard_key_on_one_replica_and_spreads_the_rest():
    _, transport, _, h = make(replicas={"b": 4}, router="consistent_hash")
    for key in ("user-1", "user-2", "user-3"):
        assert len({h.options(shard_key=key).remote(i).result(timeout=1)["replica"] for i in range(10)}) == 1
    assert len({h.remote(i).result(timeout=1)["replica"] for i in range(40)}) > 1


def test_round_robin_spreads_evenly():
    _, _, _, h = make(replicas={"b": 3})
    counts = collections.Counter(h.remote(i).result(timeout=1)["replica"] for i in range(30))
    assert sorted(counts.values()) == [10, 10, 10]


def test_sessions_stick_and_only_move_when_their_replica_leaves():
    source, _, router, h = make(replicas={"b": 4})
    sessions = [f"session-{i}" for i in range(30)]
    home = {}
    for sid in sessions:
        seen = {h.options(session_id=sid).remote(i).result(timeout=1)["replica"] for i in range(5)}
        assert len(seen) == 1
        home[sid] = seen.pop()
    leaving = home[sessions[0]]
    remaining = tuple(replica("b", f"r{i}") for i in range(4) if f"serveplane:b#r{i}" != leaving)
    source.set(keys.replicas("b"), remaining)
    for sid in sessions:
        now = h.options(session_id=sid).remote(0).result(timeout=1)["replica"]
        if home[sid] != leaving:
            assert now == home[sid]
        else:
            assert now != leaving
    assert router.statistics()["session_moves"] == sum(1 for r in home.values() if r == leaving)


def test_session_context_reaches_nested_calls():
    _, transport, _, h = make(replicas={"b": 3})

    async def main():
        async with h.session("s-1") as s:
            first = await s.remote(1)
            nested = await h.remote(2)   # no option: the context carries the session
        after = await h.remote(3)
        return first, nested, after

    first, nested, after = asyncio.run(main())
    assert first["session"] == nested["session"] == "s-1" and first["replica"] == nested["replica"]
    assert after["session"] is None and current_session_id.get() is None


def test_least_loaded_and_power_of_two_avoid_the_busy_replica():
    for policy in ("least_loaded", "power_of_two"):
        _, transport, router, h = make(auto=None, replicas={"b": 2}, router=policy)
        busy = [h.remote(i) for i in range(3)]      # spread over both replicas
        loads = collections.Counter(c.replica.actor_name for c in transport.calls)
        assert sorted(loads.values()) == [1, 2], (policy, loads)
        idle = min(loads, key=loads.get)
        busy.append(h.remote("next"))
        assert transport.calls[-1].replica.actor_name == idle, policy
        for call in transport.pending():
            call.answer(None)
        for response in busy:
            response.result(timeout=1)


class PickLast(Router):
    def choose(self, replicas, request):
        assert request.endpoint == "ep" and request.method_name == "__call__"
        return replicas[-1]


def test_user_router_subclass_from_a_blob():
    _, _, router, h = make(replicas={"b": 3}, router="custom", router_blob=cloudpickle.dumps(PickLast))
    assert {h.remote(i).result(timeout=1)["replica"] for i in range(5)} == {"serveplane:b#r2"}
    assert router.statistics()["policy"] == "custom"


def test_a_broken_router_blob_falls_back_to_round_robin(caplog):
    _, _, _, h = make(replicas={"b": 2}, router="custom", router_blob=b"not a pickle")
    assert len({h.remote(i).result(timeout=1)["replica"] for i in range(4)}) == 2
    assert "cannot be used" in caplog.text


def test_shadow_never_delays_primary_and_is_counted():
    source, transport, router, h = make(auto=None, traffic={"a": 1.0}, shadows={"s": 1.0},
                                        replicas={"a": 1, "s": 1})
    response = h.remote(7)
    primary, shadow = transport.calls
    assert (primary.replica.backend, shadow.replica.backend) == ("a", "s")
    assert shadow.meta.is_shadow and not primary.meta.is_shadow
    primary.answer(14)
    assert response.result(timeout=1) == 14   # the shadow has not answered
    shadow.answer(14)
    stats = router.statistics()["shadows"]["s"]
    assert (stats["sent"], stats["completed"], stats["errors"], stats["agreement"]) == (1, 1, 0, 1.0)

    second = h.remote(8)
    transport.calls[-1].fail(RuntimeError("shadow broke"))
    transport.calls[-2].answer(16)
    assert second.result(timeout=1) == 16
    stats = router.statistics()["shadows"]["s"]
    assert (stats["sent"], stats["errors"], stats["compared"]) == (2, 1, 1)


def test_shadow_is_dropped_when_its_backend_is_full():
    _, transport, router, h = make(auto=None, traffic={"a": 1.0}, shadows={"s": 1.0},
                                   replicas={"a": 1, "s": 1}, config={"s": {"max_concurrent_queries": 1}})
    first, second = h.remote(1), h.remote(2)
    assert [c.replica.backend for c in transport.calls] == ["a", "s", "a"]
    assert router.statistics()["shadows"]["s"]["dropped"] == 1
    for call in transport.pending():
        call.answer(0)
    assert first.result(timeout=1) == second.result(timeout=1) == 0


def test_fanout_reports_every_replica_and_checks_quorum():
    def ping(ref):
        if ref.replica.replica_tag == "r1":
            raise RuntimeError(f"{ref.replica.actor_name} refuses")
        return ref.replica.actor_name

    _, _, _, h = make(auto=ping, traffic={"a": 0.5, "b": 0.5}, shadows={"s": 1.0},
                      replicas={"a": 2, "b": 1, "s": 1})
    results = h.fanout("x")
    assert sorted(results) == ["serveplane:a#r0", "serveplane:a#r1", "serveplane:b#r0"]  # no shadows
    assert isinstance(results["serveplane:a#r1"], RuntimeError)
    assert all(v is not None for v in results.values())
    assert len(h.fanout("x", quorum=2)) == 3
    with pytest.raises(QuorumError, match="2 of 3 replicas answered, quorum is 3") as err:
        h.fanout("x", quorum=3)
    assert "a#r1" in str(err.value) and len(err.value.results) == 3
    results = asyncio.run(h.fanout_async("x", quorum=2))
    assert len(results) == 3


def test_options_are_checked_and_handles_on_a_static_source_refuse_to_pickle():
    _, _, _, h = make()
    with pytest.raises(ValueError, match="timeout_s is -1; it must be a number of seconds > 0"):
        h.options(timeout_s=-1)
    with pytest.raises(TypeError, match="exists only in this process.*get_handle"):
        pickle.dumps(h)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(h.remote(1))
    assert repr(h.options(method_name="predict")) == "<Handle ep.predict>"


def test_handle_built_from_a_name_and_a_source():
    source = StaticSource()
    publish(source)
    h = Handle("ep", source=source)
    assert h.router.endpoint == "ep" and h.router.statistics()["replicas"] == {
        "b": ["serveplane:b#r0", "serveplane:b#r1"]}


def test_router_side_batching_sends_one_call_per_batch():
    def batch(ref):
        calls = ref.args[0]
        return [(True, args[0] * 3) for args, _ in calls]

    _, transport, router, h = make(auto=batch, replicas={"b": 1}, batch_size=4, batch_timeout_s=0.01)

    async def main():
        return await asyncio.gather(*(h.remote(i) for i in range(8)))

    assert asyncio.run(main()) == [i * 3 for i in range(8)]
    assert len(transport.calls) == 2 and router.statistics()["max_batch_size_seen"] == 4
