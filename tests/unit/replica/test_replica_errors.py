"""Issue 22 #14 (replica side) and #5: what the replica raises for serveplane's own reasons
is a serveplane type whose message names the endpoint, the backend and what happened; a
user's exception keeps its type."""

from __future__ import annotations

import asyncio
import threading
import time

import cloudpickle
import pytest

import serveplane
from serveplane.config import BackendConfig
from serveplane.context import current_context
from serveplane.exceptions import RequestCancelledError, RequestTimeoutError
from serveplane.records import RequestMetadata
from serveplane.replica.actor import ReplicaActor
from serveplane.replica.batching import Batcher


class Model:
    async def own_timeout(self):
        raise TimeoutError("my model's own timeout")

    async def forever(self):
        await asyncio.Event().wait()


class SteppingClock:
    """Each read of the wall clock is ``step_s`` later than the one before."""

    def __init__(self, step_s: float) -> None:
        self.now = time.time()
        self.step_s = step_s

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        self.now += self.step_s
        return self.now


def _replica(cls, clock=None, **config) -> ReplicaActor:
    extra = {"clock": clock} if clock is not None else {}
    return ReplicaActor("b", "r0", cloudpickle.dumps(cls), cloudpickle.dumps(((), {})),
                        BackendConfig(**config).model_dump(), "v1", **extra)


def test_the_users_own_timeout_error_keeps_its_type_under_a_deadline():
    replica = _replica(Model)
    meta = RequestMetadata("r1", "ep", "own_timeout", deadline=time.time() + 60)
    with pytest.raises(TimeoutError, match="my model's own timeout") as info:
        asyncio.run(replica.handle_request(meta))
    assert not isinstance(info.value, RequestTimeoutError)


def test_a_deadline_passed_while_running_names_endpoint_and_backend():
    clock = SteppingClock(step_s=2.0)  # admitted in time; past deadline + grace once running
    replica = _replica(Model, clock)
    meta = RequestMetadata("r1", "ep", "forever", deadline=clock.now + 3.0)
    with pytest.raises(RequestTimeoutError,
                       match=r"request r1 of endpoint 'ep' passed its deadline while running on "
                             r"backend 'b'; it was cancelled"):
        asyncio.run(replica.handle_request(meta))


def test_a_batch_function_cancelled_from_inside_fails_its_callers_with_a_serveplane_error():
    """A CancelledError out of the batch function (not of the batcher) killed the batcher's
    task: that batch's callers waited forever."""
    calls = []

    async def batch_fn(items: list) -> list:
        calls.append(items)
        if len(calls) == 1:
            raise asyncio.CancelledError()
        return items

    async def main() -> None:
        batcher = Batcher(batch_fn, "b.m", max_batch_size=2, batch_wait_timeout_s=0.0)
        first = await asyncio.wait_for(
            asyncio.gather(batcher.submit(1), return_exceptions=True), 5)
        assert isinstance(first[0], RequestCancelledError)
        assert "batch method 'b.m'" in str(first[0]) and "cancelled" in str(first[0])
        assert await asyncio.wait_for(batcher.submit(2), 10) == 2  # the next batch runs

    asyncio.run(main())


class Child:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SyncStreams:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed = False

    def tokens(self):
        try:
            child = Child()
            current_context.get().add_child(child)  # a nested handle call it made
            self.children.append(child)
            yield 0
            self.entered.set()
            assert self.gate.wait(10)
            yield 1
        finally:
            self.closed = True


def test_cancelling_a_sync_generator_stream_cancels_its_nested_calls_and_closes_it():
    async def main() -> None:
        replica = _replica(SyncStreams)
        user = replica._callable
        stream = replica.handle_stream(RequestMetadata("r1", "ep", "tokens"))
        assert await stream.__anext__() == 0
        step = asyncio.ensure_future(stream.__anext__())
        assert await asyncio.get_running_loop().run_in_executor(None, user.entered.wait, 10)
        step.cancel()
        asyncio.get_running_loop().call_soon(user.gate.set)
        with pytest.raises(asyncio.CancelledError):
            await step
        assert user.closed and user.children[0].cancelled
        stats = await replica.data_path_stats()
        assert stats["admitted"] == 0 and stats["cancelled"] == 1
        assert stats["pool"] == 0

    asyncio.run(main())


def test_serveplane_package_has_the_types_used():
    assert issubclass(serveplane.exceptions.RequestCancelledError, serveplane.exceptions.ServeplaneError)


class Mates:
    async def __call__(self, x):
        if x == "cancel me":
            raise asyncio.CancelledError()  # e.g. a nested call of its own was cancelled
        return x


def test_a_batch_mate_cancelled_from_inside_does_not_cancel_the_router_batch():
    """Router-side batch: one call whose user code raised CancelledError failed the whole
    handle_batch (the others got Ray's TaskCancelledError); now only that call fails, with
    a serveplane error naming its endpoint and backend."""
    replica = _replica(Mates)
    out = asyncio.run(replica.handle_batch(RequestMetadata("r1", "ep"),
                                           [(("a",), {}), (("cancel me",), {}), (("b",), {})]))
    assert out[0] == (True, "a") and out[2] == (True, "b")
    ok, error = out[1]
    assert not ok and isinstance(error, RequestCancelledError)
    assert "endpoint 'ep'" in str(error) and "backend 'b'" in str(error)


def test_a_gathered_chunk_cancelled_inside_fails_only_that_chunk():
    calls = []

    async def batch_fn(items: list) -> list:
        calls.append(items)
        if len(calls) == 1:
            raise asyncio.CancelledError()
        return items

    batcher = Batcher(batch_fn, "b.m", max_batch_size=2, batch_wait_timeout_s=0.0)
    out = asyncio.run(batcher.run_gathered([1, 2, 3]))
    assert [ok for ok, _ in out] == [False, False, True] and out[2] == (True, 3)
    assert isinstance(out[0][1], RequestCancelledError) and "'b.m'" in str(out[0][1])
