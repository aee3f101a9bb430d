"""Router figures stay meaningful in bounded memory, however many requests pass (no Ray)."""

from __future__ import annotations

import tracemalloc

from serveplane.router import Handle, StaticSource
from serveplane.router.router import EndpointRouter
from serveplane.router.stats import BatchSizes
from tests.unit.router.fakes import FakeTransport, publish


def answer_batch(ref):
    return [(True, args[0]) for args, _ in ref.args[0]]


def test_router_counts_every_batch_not_only_the_last_thousand():
    source = StaticSource()
    transport = FakeTransport(auto=answer_batch)
    router = EndpointRouter("ep", source, transport=transport)
    publish(source, replicas={"b": 1}, batch_size=2, batch_timeout_s=60.0)
    h = Handle(router)
    for i in range(1_500):
        first, second = h.remote(i), h.remote(-i)  # the second fills the batch: sent at once
        assert (first.result(timeout=1), second.result(timeout=1)) == (i, -i)
    stats = router.statistics()
    assert len(transport.calls) == 1_500 and stats["batches"] == 1_500
    assert (stats["max_batch_size_seen"], stats["avg_batch_size"]) == (2, 2.0)
    assert stats["batch_sizes"] == {"2-3": 1_500}
    assert stats["requests"] == 3_000 and stats["in_flight"] == 0


def test_batch_sizes_stay_bounded_after_100k_batches():
    sizes = BatchSizes()
    tracemalloc.start()
    try:
        for size in range(1, 1_001):
            sizes.add(size)
        before = tracemalloc.take_snapshot()
        for i in range(100_000):
            sizes.add(1 + i % 5_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # only what stats.py allocated: other threads of the test process allocate meanwhile
    grown = sum(s.size_diff for s in after.compare_to(before, "filename")
                if s.traceback[0].filename.endswith("router/stats.py"))
    assert grown < 16 * 1024
    figures = sizes.as_dict()
    assert (figures["batches"], figures["max_batch_size_seen"]) == (101_000, 5_000)
    assert sum(figures["batch_sizes"].values()) == 101_000


def test_batch_size_histogram_buckets():
    sizes = BatchSizes()
    for size in (1, 2, 3, 4, 7, 8, 1000, 40_000, 10 ** 9):
        sizes.add(size)
    figures = sizes.as_dict()
    assert figures["batch_sizes"] == {"1": 1, "2-3": 2, "4-7": 2, "8-15": 1, "512-1023": 1,
                                      "32768+": 2}
    assert (figures["batches"], figures["max_batch_size_seen"]) == (9, 10 ** 9)
    assert figures["avg_batch_size"] == sum((1, 2, 3, 4, 7, 8, 1000, 40_000, 10 ** 9)) / 9
