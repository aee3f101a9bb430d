"""Issue 22 #13 and #8: when a replica's drain may end (fake clock; no Ray, no sleeps)."""

from __future__ import annotations

import asyncio
import math

import cloudpickle
import pytest

from serveplane.config import BackendConfig
from serveplane.exceptions import ReplicaFullError, RequestTimeoutError
from serveplane.records import RequestMetadata
from serveplane.replica.actor import ReplicaActor
from serveplane.replica.drain import DRAIN_QUIET_S, InFlight
from serveplane.replica.streaming import StreamHandoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def test_quiet_window_outlasts_a_routers_back_off_after_a_refusal():
    from serveplane.router.slots import FULL_MAX_S  # the tests may look at both sides

    assert DRAIN_QUIET_S >= 2 * FULL_MAX_S


def test_drain_of_an_idle_replica_waits_a_quiet_window():
    clock = FakeClock()
    inflight = InFlight(clock, quiet_s=1.0)
    inflight.begin_drain()
    assert inflight.drain_wait_s(clock.now) == pytest.approx(1.0)
    clock.now += 1.0
    assert inflight.drain_wait_s(clock.now) is None


def test_each_arrival_during_drain_restarts_the_quiet_window():
    """A router that has not yet heard the replica left keeps sending (refused): the drain
    may end only once it stopped, or a request on its way meets a killed replica."""
    clock = FakeClock()
    inflight = InFlight(clock, quiet_s=1.0)
    inflight.begin_drain()
    for _ in range(5):
        clock.now += 0.6
        inflight.arrived()  # refused as draining
        assert inflight.drain_wait_s(clock.now) == pytest.approx(1.0)
    clock.now += 1.0
    assert inflight.drain_wait_s(clock.now) is None


@pytest.mark.parametrize("what", ["admitted", "body", "pool"])
def test_drain_waits_for_every_kind_of_work_in_flight(what):
    clock = FakeClock()
    inflight = InFlight(clock, quiet_s=1.0)
    start, end = {"admitted": (inflight.take, inflight.leave),
                  "body": (inflight.body_kept, inflight.body_ended),
                  "pool": (inflight.pool_started, inflight.pool_done)}[what]
    start()
    inflight.begin_drain()
    clock.now += 60
    assert inflight.drain_wait_s(clock.now) == math.inf
    end()
    assert inflight.drain_wait_s(clock.now) is None  # quiet since long before it ended
    assert inflight.busy() == 0


def test_wait_drained_wakes_when_the_last_work_ends_and_reports_leftovers():
    async def main() -> None:
        inflight = InFlight(quiet_s=0.0)
        inflight.take(2)
        waiter = asyncio.ensure_future(inflight.wait_drained(30))
        await asyncio.sleep(0)
        assert inflight.draining and not waiter.done()
        inflight.leave()
        await asyncio.sleep(0)
        assert not waiter.done()
        inflight.leave()
        assert await asyncio.wait_for(waiter, 30) == 0
        inflight.take()
        assert await inflight.wait_drained(0) == 1  # timed out: one still in flight

    asyncio.run(main())


# -- the replica's own accounting -----------------------------------------------------------

class Body:
    def __init__(self) -> None:
        self.closed = False
        self.iterator = self.chunks()

    async def chunks(self):
        try:
            for i in range(5):
                yield f"part{i} "
        finally:
            self.closed = True


class Streams:
    def __init__(self) -> None:
        self.bodies: list[Body] = []

    async def __call__(self, request=None):
        from starlette.responses import StreamingResponse

        body = Body()
        self.bodies.append(body)
        return StreamingResponse(body.iterator, media_type="text/plain")

    def sync_call(self, gate):
        return "done"


def _replica(cls=Streams, **config) -> ReplicaActor:
    return ReplicaActor("b", "r0", cloudpickle.dumps(cls), cloudpickle.dumps(((), {})),
                        BackendConfig(**config).model_dump(), "v1", clock=FakeClock())


def test_a_handed_off_body_keeps_the_drain_open_until_pulled_to_its_end():
    """The issue's cut: drain returned in 0.00 s after 1 of 5 parts of a handed-off body."""
    async def main() -> None:
        replica = _replica(max_concurrent_queries=2)
        replica._inflight._quiet_s = 0.0
        handoff = await replica.handle_request(RequestMetadata("r1", "ep", http=True))
        assert isinstance(handoff, StreamHandoff)
        drain = asyncio.ensure_future(replica.prepare_for_shutdown(30))
        body = replica.pull_stream(handoff.stream_id)
        parts = [await body.__anext__()]
        for _ in range(3):
            await asyncio.sleep(0)
        assert not drain.done(), "the drain ended with the body mid-transfer"
        async for chunk in body:
            parts.append(chunk)
        assert await asyncio.wait_for(drain, 30) == 0
        text = "".join(c if isinstance(c, str) else "".join(c.items) for c in parts)
        assert text == "part0 part1 part2 part3 part4 "

    asyncio.run(main())


def test_a_handed_off_body_counts_against_admission_until_it_ended():
    async def main() -> None:
        replica = _replica(max_concurrent_queries=1)
        handoff = await replica.handle_request(RequestMetadata("r1", "ep", http=True))
        with pytest.raises(ReplicaFullError, match=r"max_concurrent_queries=1.*did not run"):
            await replica.handle_request(RequestMetadata("r2", "ep", http=True))
        async for _ in replica.pull_stream(handoff.stream_id):
            pass
        assert isinstance(await replica.handle_request(RequestMetadata("r3", "ep", http=True)),
                          StreamHandoff)

    asyncio.run(main())


def test_an_unpulled_body_is_closed_after_its_ttl_and_leaves_the_replica():
    async def main() -> None:
        replica = _replica(max_concurrent_queries=1)
        replica._handoffs._ttl_s = 0.0
        await replica.handle_request(RequestMetadata("r1", "ep", http=True))
        assert replica._inflight.bodies == 1
        assert await asyncio.wait_for(_drained(replica), 30) == 0
        assert replica._inflight.bodies == 0 and len(replica._handoffs) == 0
        assert replica._callable.bodies[0].iterator.ag_frame is None  # closed

    async def _drained(replica: ReplicaActor) -> int:
        replica._inflight._quiet_s = 0.0
        return await replica.prepare_for_shutdown(30)

    asyncio.run(main())


def test_draining_replica_refuses_with_a_message_that_names_backend_and_endpoint():
    async def main() -> None:
        replica = _replica()
        replica._inflight.begin_drain()
        with pytest.raises(ReplicaFullError,
                           match=r"replica r0 of backend 'b' \(endpoint 'ep'\) is draining.*did not run"):
            await replica.handle_request(RequestMetadata("r1", "ep"))

    asyncio.run(main())


class Hangs:
    async def __call__(self, request=None):
        from starlette.responses import StreamingResponse

        async def body():
            yield "part0 "
            await asyncio.Event().wait()  # never produces the rest
            yield "never"

        return StreamingResponse(body(), media_type="text/plain")


class SteppingClock(FakeClock):
    """Each wall-clock read is 2 s after the one before."""

    def time(self) -> float:
        self.now += 2.0
        return self.now


def test_a_handed_off_body_runs_under_its_requests_deadline():
    async def main() -> None:
        clock = SteppingClock()
        replica = ReplicaActor("b", "r0", cloudpickle.dumps(Hangs), cloudpickle.dumps(((), {})),
                               BackendConfig().model_dump(), "v1", clock=clock)
        # admitted in time (one read), past deadline + grace when the pull starts (more reads)
        meta = RequestMetadata("r1", "ep", http=True, deadline=clock.now + 5.0)
        handoff = await replica.handle_request(meta)
        parts = []
        with pytest.raises(RequestTimeoutError, match=r"request r1 of endpoint 'ep' passed its deadline"):
            async for chunk in replica.pull_stream(handoff.stream_id):
                parts.append(chunk)
        assert parts == ["part0 "]
        assert replica._inflight.bodies == 0 and replica._inflight.admitted == 0

    asyncio.run(main())


class Slow:
    def __init__(self) -> None:
        self.closed = 0

    async def __call__(self, request=None):
        from starlette.responses import StreamingResponse

        async def body():
            try:
                for i in range(100):
                    yield f"part{i} "
                    await asyncio.sleep(0)
            finally:
                self.closed += 1

        return StreamingResponse(body(), media_type="text/plain")

    async def tokens(self):
        try:
            for i in range(100):
                yield i
                await asyncio.sleep(0)
        finally:
            self.closed += 1


def test_a_pull_closed_mid_body_closes_the_body_at_once_and_leaves_the_replica():
    """The proxy's client went away: Ray closes the pull (GeneratorExit)."""
    async def main() -> None:
        replica = _replica(Slow)
        handoff = await replica.handle_request(RequestMetadata("r1", "ep", http=True))
        pull = replica.pull_stream(handoff.stream_id)
        await pull.__anext__()
        await pull.__anext__()  # the coalescing producer now reads the body in its own task
        await pull.aclose()
        assert replica._callable.closed == 1  # closed by the aclose, not by the collector
        stats = await replica.data_path_stats()
        assert stats["bodies"] == 0 and stats["cancelled"] == 1

    asyncio.run(main())


def test_a_stream_closed_by_its_caller_closes_the_users_generator_at_once():
    async def main() -> None:
        replica = _replica(Slow)
        stream = replica.handle_stream(RequestMetadata("r1", "ep", "tokens"))
        await stream.__anext__()
        await stream.__anext__()
        await stream.aclose()
        assert replica._callable.closed == 1
        stats = await replica.data_path_stats()
        assert stats["admitted"] == 0 and stats["cancelled"] == 1

    asyncio.run(main())
