"""Replica-side and router-side batching through real handles."""

from __future__ import annotations

import asyncio

import pytest

from serveplane import BatchSizeMismatchError
from tests.integration.batching.backends import BatchedModel, ClassicBatched, PlainModel

pytestmark = [pytest.mark.ray]


def gather(handle, xs):
    async def main():
        return await asyncio.gather(*(handle.remote(x) for x in xs), return_exceptions=True)
    return asyncio.run(main())


def test_replica_side_batch_decorator(serve_instance):
    client = serve_instance
    client.create_backend("b", BatchedModel)
    client.create_endpoint("ep", backend="b")
    h = client.get_handle("ep")
    out = gather(h, range(20))
    assert [o["y"] for o in out] == [i * 10 for i in range(20)]
    sizes = h.options(method_name="seen").remote().result(timeout=30)
    assert max(sizes) <= 8 and max(sizes) > 1 and sum(sizes) == 20


def test_batch_size_mismatch_fails_that_batch_only(serve_instance):
    client = serve_instance
    client.create_backend("b", BatchedModel)
    client.create_endpoint("ep", backend="b")
    h = client.get_handle("ep")
    h.options(method_name="break_next").remote().result(timeout=30)
    first = gather(h, range(4))
    assert all(isinstance(e, BatchSizeMismatchError) for e in first), first
    assert "returned 3 results for a batch of 4" in str(first[0])
    assert [o["y"] for o in gather(h, range(4))] == [0, 10, 20, 30]


def test_classic_accept_batch_with_backend_config(serve_instance):
    client = serve_instance
    client.create_backend("c", ClassicBatched, config={"max_batch_size": 4, "batch_wait_timeout": 0.05})
    client.create_endpoint("ep", backend="c")
    out = gather(client.get_handle("ep"), range(12))
    assert [o["y"] for o in out] == [i + 1 for i in range(12)]
    assert max(o["batch"] for o in out) == 4 and min(o["batch"] for o in out) >= 1


def test_router_side_batching_one_actor_call_per_batch(serve_instance):
    client = serve_instance
    client.create_backend("p", PlainModel)
    client.create_endpoint("ep", backend="p", batch_size=8, batch_timeout_s=0.02)
    h = client.get_handle("ep")
    assert h.remote(1).result(timeout=30) == 3
    before = h.router.statistics()["batches"]
    assert gather(h, range(32)) == [i * 3 for i in range(32)]
    stats = h.router.statistics()
    assert stats["max_batch_size_seen"] == 8
    assert stats["batches"] - before == 4  # 32 calls, four actor calls
    # calls in a session are batched on their session's replica: affinity is kept
    sid = client.start_session()
    moves = stats["session_moves"]
    for i in range(5):
        assert h.options(session_id=sid).remote(i).result(timeout=30) == i * 3
    assert h.router.statistics()["session_moves"] == moves
    stats = h.router.statistics()
    # changing the batching of a live endpoint reaches the router
    client.set_batching("ep", None)
    import time
    deadline = time.monotonic() + 5
    while h.router.endpoint_info.batch_size is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert gather(h, range(8)) == [i * 3 for i in range(8)]
    assert h.router.statistics()["batches"] == stats["batches"]


def test_router_batches_into_a_batch_method(serve_instance):
    client = serve_instance
    client.create_backend("b", BatchedModel)
    client.create_endpoint("ep", backend="b", batch_size=16, batch_timeout_s=0.02)
    h = client.get_handle("ep")
    out = gather(h, range(16))
    assert [o["y"] for o in out] == [i * 10 for i in range(16)]
    # the replica splits the router's batch of 16 by the method's max_batch_size (8)
    assert max(o["batch"] for o in out) == 8
