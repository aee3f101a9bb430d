"""When the metrics reporter sends a router's figures to the controller (no Ray, no thread)."""

from __future__ import annotations

import pytest

from serveplane.router import Handle, StaticSource
from serveplane.router.reporter import Figures, ReportLedger, report_due
from serveplane.router.router import EndpointRouter
from tests.unit.router.fakes import FakeTransport, publish

QUIET = {"b": {"queued": 0.0, "in_flight": 0.0, "rate": 0.0}}
BUSY = {"b": {"queued": 0.0, "in_flight": 2.0, "rate": 0.0}}


def figures(load=QUIET, requests=0, shadows=0):
    return Figures(load, {"requests": requests, "shadows": {"s": {"count": shadows}} if shadows else {}})


@pytest.mark.parametrize("now, last, due", [
    (figures(), None, True),
    (figures(), figures(), False),
    (figures(requests=30, shadows=30), figures(), True),
    (figures(requests=30, shadows=30), figures(requests=30, shadows=30), False),
    (figures(BUSY, requests=2), figures(BUSY, requests=2), True),
    (figures(requests=2), figures(BUSY, requests=2), True),
], ids=["first-report", "unchanged-and-quiet", "burst-between-ticks", "burst-already-sent",
        "busy-every-tick", "once-when-it-goes-quiet"])
def test_report_due(now, last, due):
    assert report_due(now, last) is due


def test_a_burst_before_the_first_tick_is_reported_then_the_router_stays_silent():
    source = StaticSource()
    transport = FakeTransport(auto=lambda ref: "ok")
    router = EndpointRouter("ep", source, transport=transport)
    publish(source, replicas={"b": 2})
    ledger = ReportLedger()
    sent = []

    def tick():
        current = Figures(router.load_report(), router.statistics())
        if ledger.due(router.router_id, current):
            ledger.sent(router.router_id, current)
            sent.append(current)
        return current

    h = Handle(router)
    for i in range(30):  # the whole burst falls before the reporter's first look
        assert h.remote(i).result(timeout=1) == "ok"
    first = tick()
    assert not first.busy  # no earlier count to take a rate from: "was it busy?" says no
    assert [f.statistics["requests"] for f in sent] == [30]
    tick()
    assert len(sent) == 1  # nothing new: nothing sent
    for i in range(5):  # a second burst, between two ticks
        assert h.remote(i).result(timeout=1) == "ok"
    tick()  # busy or not (rates are taken at most every 0.1 s), the new count is sent
    assert [f.statistics["requests"] for f in sent] == [30, 35]


def test_ledger_forgets_routers_that_are_gone():
    ledger = ReportLedger()
    ledger.sent("ep:1", figures())
    ledger.sent("ep:2", figures())
    ledger.keep_only(["ep:2"])
    assert ledger.due("ep:1", figures()) and not ledger.due("ep:2", figures())
