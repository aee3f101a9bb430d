"""RouterReports: one owner of what routers last said, one freshness rule, bounded memory
(fake clock, no Ray, no sleeps)."""

from __future__ import annotations

from serveplane.controller.router_reports import MAX_ROUTERS, ROUTER_REPORT_FRESH_S, RouterReports


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


def stats(endpoint: str = "ep", requests: int = 1) -> dict:
    return {"endpoint": endpoint, "backends": {"v1": {"requests": requests}}}


def test_memory_stays_bounded_with_many_short_lived_routers():
    """A router per request, say (a process per job): 100,000 router ids over an hour,
    twenty a second. Only those heard from within the freshness window are held."""
    clock = FakeClock()
    reports = RouterReports(clock)
    largest = 0
    for i in range(100_000):
        reports.record(f"router-{i}", {"v1": {"queued": 1.0, "in_flight": 0.0, "rate": 1.0}}, stats())
        clock.now += 0.05
        largest = max(largest, len(reports))
    assert largest <= ROUTER_REPORT_FRESH_S / 0.05 + 1
    assert len(reports) <= ROUTER_REPORT_FRESH_S / 0.05 + 1
    assert "router-0" not in reports and "router-99999" in reports


def test_stale_routers_drop_and_no_longer_count():
    clock = FakeClock()
    reports = RouterReports(clock)
    reports.record("a", {}, stats(requests=3))
    clock.now += ROUTER_REPORT_FRESH_S / 2
    reports.record("b", {}, stats(requests=4))
    assert [r.router_id for r in reports.fresh()] == ["a", "b"]
    clock.now += ROUTER_REPORT_FRESH_S / 2 + 0.01        # a is now silent for longer than the rule
    assert [r.router_id for r in reports.fresh()] == ["b"]
    assert "a" not in reports and len(reports) == 1     # dropped, not only hidden
    reports.record("a", {}, stats(requests=5))           # a router that speaks again is back
    assert sorted(r.router_id for r in reports.fresh()) == ["a", "b"]
    clock.now += ROUTER_REPORT_FRESH_S + 1
    assert reports.fresh() == [] and len(reports) == 0


def test_a_report_replaces_the_routers_last_one():
    clock = FakeClock()
    reports = RouterReports(clock)
    for n in range(50):
        reports.record("a", {}, stats(requests=n))
        clock.now += 1
    assert len(reports) == 1
    assert reports.fresh()[0].stats["backends"]["v1"]["requests"] == 49


def test_a_load_only_report_keeps_the_last_statistics():
    clock = FakeClock()
    reports = RouterReports(clock)
    reports.record("a", {}, stats(requests=7))
    reports.record("a", {"v1": {"queued": 2.0}}, None)
    (report,) = reports.fresh()
    assert report.stats["backends"]["v1"]["requests"] == 7 and report.load == {"v1": {"queued": 2.0}}


def test_more_live_routers_than_the_cap_drop_the_longest_silent():
    clock = FakeClock()
    reports = RouterReports(clock, max_routers=100)
    for i in range(250):
        reports.record(f"r{i}", {}, stats())
    assert len(reports) == 100 and "r249" in reports and "r149" not in reports
    assert reports.statistics()["dropped_over_cap"] == 150
    assert RouterReports(clock).statistics()["max_routers"] == MAX_ROUTERS


def test_load_sums_fresh_routers_per_backend():
    clock = FakeClock()
    reports = RouterReports(clock)
    reports.record("a", {"v1": {"queued": 2.0, "in_flight": 1.0, "rate": 10.0}}, None)
    reports.record("b", {"v1": {"queued": 1.0, "in_flight": 3.0, "rate": 5.0},
                         "v2": {"queued": 9.0, "in_flight": 0.0, "rate": 0.0}}, None)
    assert reports.load("v1") == {"queued": 3.0, "in_flight": 4.0, "rate": 15.0}
    clock.now += ROUTER_REPORT_FRESH_S + 1
    assert reports.load("v1") == {"queued": 0.0, "in_flight": 0.0, "rate": 0.0}
