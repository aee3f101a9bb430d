"""Replica-side batching: no Ray, one event loop per test."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import serveplane
from serveplane.exceptions import BatchSizeMismatchError, InvalidConfigError


def run(coro):
    return asyncio.run(coro)


class Doubler:
    def __init__(self, size=4, wait=0.01):
        self.calls: list[list[int]] = []

    @serveplane.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def __call__(self, items):
        self.calls.append(list(items))
        return [i * 2 for i in items]


def test_concurrent_calls_are_gathered_and_each_gets_its_own_element():
    model = Doubler()

    async def main():
        return await asyncio.gather(*(model(i) for i in range(10)))

    assert run(main()) == [i * 2 for i in range(10)]
    assert sum(len(c) for c in model.calls) == 10
    assert max(len(c) for c in model.calls) == 4
    assert len(model.calls) == 3  # 4 + 4 + 2


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 6), gaps=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.003]), min_size=1, max_size=25))
def test_max_batch_size_is_never_exceeded(size, gaps):
    seen: list[int] = []

    @serveplane.batch(max_batch_size=size, batch_wait_timeout_s=0.002)
    async def fn(items):
        seen.append(len(items))
        await asyncio.sleep(0)
        return list(items)

    async def main():
        tasks = []
        for i, gap in enumerate(gaps):
            tasks.append(asyncio.ensure_future(fn(i)))
            if gap:
                await asyncio.sleep(gap)
        return await asyncio.gather(*tasks)

    assert run(main()) == list(range(len(gaps)))
    assert max(seen) <= size and sum(seen) == len(gaps)


def test_wrong_length_fails_that_batch_only():
    state = {"bad": True}

    @serveplane.batch(max_batch_size=3, batch_wait_timeout_s=0.01)
    async def fn(items):
        if state["bad"]:
            state["bad"] = False
            return items[:-1]
        return items

    async def main():
        first = await asyncio.gather(*(fn(i) for i in range(3)), return_exceptions=True)
        second = await asyncio.gather(*(fn(i) for i in range(3)))
        return first, second

    first, second = run(main())
    assert all(isinstance(e, BatchSizeMismatchError) for e in first)
    assert "returned 2 results for a batch of 3" in str(first[0]) and "fn" in str(first[0])
    assert second == [0, 1, 2]


def test_raising_batch_fails_its_callers_and_next_batch_works():
    state = {"n": 0}

    @serveplane.batch(max_batch_size=2, batch_wait_timeout_s=0.01)
    async def fn(items):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("model exploded")
        return items

    async def main():
        first = await asyncio.gather(fn(1), fn(2), return_exceptions=True)
        return first, await asyncio.gather(fn(3), fn(4))

    first, second = run(main())
    assert [str(e) for e in first] == ["model exploded", "model exploded"]
    assert second == [3, 4]


def test_cancelled_caller_does_not_break_the_batch():
    @serveplane.batch(max_batch_size=3, batch_wait_timeout_s=0.05)
    async def fn(items):
        return [i + 100 for i in items]

    async def main():
        a = asyncio.ensure_future(fn(1))
        b = asyncio.ensure_future(fn(2))
        await asyncio.sleep(0.005)
        b.cancel()
        c = asyncio.ensure_future(fn(3))
        return await a, await c, b.cancelled()

    assert run(main()) == (101, 103, True)


def test_gathered_router_batch_runs_in_chunks():
    model = Doubler()
    entry = type(model).__call__._serveplane_batch
    out = run(entry.run_gathered(model, [((i,), {}) for i in range(6)]))
    assert out == [(True, i * 2) for i in range(6)]
    assert [len(c) for c in model.calls] == [4, 2]


def test_bad_decorator_arguments():
    with pytest.raises(InvalidConfigError, match="max_batch_size is 0"):
        serveplane.batch(max_batch_size=0)
    with pytest.raises(InvalidConfigError, match="needs an async function"):
        serveplane.batch(max_batch_size=2)(lambda items: items)
