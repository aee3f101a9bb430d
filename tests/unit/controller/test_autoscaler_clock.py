"""The autoscaler reads router load from RouterReports and time from the injected clock
(fake clock, no Ray): a silent router stops counting, events carry the clock's time."""

from __future__ import annotations

from serveplane.config import AutoscalingConfig
from serveplane.controller.autoscaler import Autoscaler
from serveplane.controller.router_reports import ROUTER_REPORT_FRESH_S, RouterReports


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


def test_a_queue_reported_by_a_live_router_scales_up_stamped_with_the_clocks_time():
    clock = FakeClock()
    reports = RouterReports(clock)
    autoscaler = Autoscaler(reports, clock)
    config = AutoscalingConfig(min_replicas=1, max_replicas=4)
    reports.record("r", {"m": {"queued": 100.0, "in_flight": 1.0, "rate": 50.0}}, None)
    target = autoscaler.decide("m", config, 1, 1, 1, 1, clock.monotonic())
    assert target is not None and target > 1
    assert autoscaler.events[-1].timestamp == clock.time()


def test_a_router_silent_past_the_freshness_rule_no_longer_counts():
    clock = FakeClock()
    reports = RouterReports(clock)
    autoscaler = Autoscaler(reports, clock)
    reports.record("r", {"m": {"queued": 100.0, "in_flight": 1.0, "rate": 50.0}}, None)
    assert autoscaler.aggregate("m")["queued"] == 100.0
    clock.now += ROUTER_REPORT_FRESH_S + 0.1
    assert autoscaler.aggregate("m") == {"queued": 0.0, "in_flight": 0.0, "rate": 0.0}
    assert len(reports) == 0


def test_the_controllers_metrics_follow_its_clock():
    """Router load in get_metrics ages on the controller's clock: before, reports were
    stamped with the system's monotonic time whatever clock the controller was given."""
    import asyncio
    import uuid

    from serveplane.backend_state.fake import FakeActorDirectory, FakeReplicaActorWrapper
    from serveplane.controller.controller import ServeController
    from serveplane.controller.persistence import inline_runner
    from tests.conftest import TEST_KEY

    loop = asyncio.new_event_loop()
    clock = FakeClock()
    try:
        ctrl = ServeController(f"memory://{uuid.uuid4().hex}", "unit",
                               wrapper_factory=lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True),
                               run_loop=False, run_io=inline_runner, run_ray=inline_runner,
                               actors=FakeActorDirectory(), clock=clock.monotonic, wall_clock=clock.time,
                               state_key=TEST_KEY)
        loop.run_until_complete(ctrl.create_backend("v1", b"code", b"init", {}, None))
        loop.run_until_complete(ctrl.record_handle_metrics("r", {"v1": {"queued": 8.0, "in_flight": 0.0,
                                                                        "rate": 1.0}}, None))
        assert loop.run_until_complete(ctrl.get_metrics())["service"]["avg_queue_depth"] == 8.0
        clock.now += ROUTER_REPORT_FRESH_S + 1
        assert loop.run_until_complete(ctrl.get_metrics())["service"]["avg_queue_depth"] == 0.0
    finally:
        loop.close()
