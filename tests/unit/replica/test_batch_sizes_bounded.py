"""Issue 22 #12: the replica batcher's batch sizes live in fixed memory."""

from __future__ import annotations

import asyncio
import pickle

from serveplane.replica.batching import Batcher


def test_batcher_figures_stay_bounded_after_100k_batches():
    async def double(items: list) -> list:
        return [2 * x for x in items]

    batcher = Batcher(double, "m", max_batch_size=4, batch_wait_timeout_s=0.0)

    async def main() -> None:
        for _ in range(25_000):
            out = await batcher.run_gathered([1, 2, 3, 4, 5, 6, 7])  # batches of 4 and 3
            assert out[-1] == (True, 14)
        assert await batcher.submit(21) == 42  # one batch of 1 through the queue

    asyncio.run(main())
    # a list of 50 001 sizes pickles to about 100 kB; a fixed histogram to well under 1 kB
    assert len(pickle.dumps(batcher.batch_sizes)) < 1024
    figures = batcher.batch_sizes.as_dict()
    assert figures["batches"] == 50_001
    assert figures["batch_sizes"] == {"1": 1, "2-3": 25_000, "4-7": 25_000}
    assert figures["max_batch_size_seen"] == 4


def test_histogram_buckets_and_the_last_open_bucket():
    from serveplane.replica.batching import BATCH_SIZE_BUCKETS, BatchSizeHistogram

    h = BatchSizeHistogram()
    for size in (1, 2, 3, 4, 8, 2 ** (BATCH_SIZE_BUCKETS + 3)):
        h.add(size)
    assert h.as_dict()["batch_sizes"] == {"1": 1, "2-3": 2, "4-7": 1, "8-15": 1,
                                          f"{2 ** (BATCH_SIZE_BUCKETS - 1)}+": 1}
