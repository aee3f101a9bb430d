"""The dashboard without Ray: the time series from routers' cumulative figures, the
snapshot, the viewer fan-out (a slow viewer skips to the latest), and the API key rule
on the proxy's dashboard paths (an ASGI call, no socket)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serveplane.config import HTTPOptions
from serveplane.dashboard.feed import TrafficSeries, build_snapshot, replica_view, same_content
from serveplane.dashboard.server import DashboardHub, api_key_from_query
from serveplane.http.proxy import ProxyApp
from serveplane.rollout.histogram import N_BUCKETS, bucket_of


def report(requests: int, errors: int = 0, latency_s: float = 0.01, failures: int = 0) -> dict:
    latency = [0] * N_BUCKETS
    latency[bucket_of(latency_s)] = requests
    return {"backends": {"b": {"requests": requests, "app_errors": errors, "replica_failures": failures,
                               "latency": latency}}}


def test_series_turns_cumulative_router_figures_into_rates_per_period() -> None:
    series = TrafficSeries(period_s=2.0, points=3)
    series.observe(100.0, [("r1", report(1000))], ["b"])  # the first look is the baseline only
    assert series.as_dict()["b"]["t"] == []
    series.observe(102.0, [("r1", report(1020, errors=2)), ("r2", report(10, latency_s=1.0))], ["b"])
    point = series.as_dict()["b"]
    assert point["rate"] == [15.0]                       # (20 + 10 new router) / 2 s
    assert point["error_rate"] == [pytest.approx(2 / 30, rel=1e-3)]
    assert point["p50_ms"][0] < 20 and point["p99_ms"][0] > 500
    series.observe(104.0, [("r2", report(10))], ["b"])   # r1 stopped reporting: adds nothing
    assert series.as_dict()["b"]["rate"][-1] == 0.0 and series.as_dict()["b"]["error_rate"][-1] is None
    for at in (106.0, 108.0):
        series.observe(at, [], ["b"])
    assert series.as_dict()["b"]["t"] == [104.0, 106.0, 108.0]  # a ring of ``points``
    series.observe(110.0, [], [])
    assert series.as_dict() == {}                        # a deleted backend's series goes


def test_series_is_due_once_per_period() -> None:
    series = TrafficSeries(period_s=2.0)
    assert series.due(0.0)
    series.observe(0.0, [], ["b"])
    assert not series.due(1.9) and series.due(2.0)


def test_snapshot_differs_only_when_its_content_does() -> None:
    def snap(at: float, weight: float) -> dict:
        return build_snapshot(at=at, namespace="ns", epoch=3, kv_store="ray://ns", checkpoint_warning=None,
                              fencing="atomic", refused=0,
                              backends={"b": {"replicas": [replica_view("r1", "RUNNING", "n" * 40, True, 0.5, 2)]}},
                              endpoints={"ep": {"traffic": {"b": weight}}}, series={}, scaling_events=[])

    first = snap(1.0, 1.0)
    assert first["backends"]["b"]["replicas"][0] == {"tag": "r1", "state": "unhealthy", "node": "n" * 12,
                                                     "gpu": 0.5, "in_flight": 2}
    assert same_content(first, snap(2.0, 1.0)) and not same_content(first, snap(2.0, 0.5))
    assert not same_content(None, first)


def test_a_snapshot_with_an_infinite_reading_still_parses_in_a_browser() -> None:
    import json

    sent: list[bytes] = []

    class Loop:
        def call_soon_threadsafe(self, fn, event):
            sent.append(event)

    DashboardHub("ns", Loop())._on_value({"readings": {"latency_ratio": float("inf"), "x": float("nan")},
                                          "at": 1.5})
    data = sent[0].decode().split("data: ", 1)[1]
    assert json.loads(data) == {"readings": {"latency_ratio": None, "x": None}, "at": 1.5}


def test_a_slow_viewer_skips_to_the_latest_snapshot_and_the_last_one_unsubscribes(monkeypatch) -> None:
    subscribed: list[str] = []

    class FakeClient:
        def subscribe(self, key, callback):
            subscribed.append(key)
            return key

        def unsubscribe(self, sub):
            subscribed.remove(sub)

    from serveplane.long_poll import LongPollClient

    monkeypatch.setattr(LongPollClient, "get_or_create", staticmethod(lambda *a: FakeClient()))
    monkeypatch.setattr(LongPollClient, "existing", staticmethod(lambda *a: FakeClient()))

    async def scenario() -> None:
        hub = DashboardHub("ns", asyncio.get_running_loop())
        fast, slow = hub._join(), hub._join()
        assert subscribed == ["dashboard"]  # one subscription, whatever the number of viewers
        for n in range(3):
            hub._fan_out(f"event {n}".encode())
            assert fast.get_nowait() == f"event {n}".encode()
        assert slow.qsize() == 1 and slow.get_nowait() == b"event 2" and hub.events_skipped == 2
        late = hub._join()
        assert late.get_nowait() == b"event 2"  # a new viewer starts from the latest
        for queue in (fast, slow, late):
            hub._leave(queue)
        assert subscribed == [] and hub.statistics()["viewers"] == 0

    asyncio.run(scenario())


KEY = "dash-key-0123456789abcdef"


@pytest.mark.parametrize("path, status", [
    ("/-/dashboard", 401), (f"/-/dashboard?key={KEY}", 303), ("/-/dashboard?key=wrong", 401),
    (f"/-/dashboard/static/dashboard.js?key={KEY}", 200), (f"/-/routes?key={KEY}", 401),
], ids=["no-key", "query-key", "wrong-key", "static-with-key", "query-key-only-on-dashboard-paths"])
def test_dashboard_paths_take_the_api_key_from_the_query(path: str, status: int) -> None:
    app = ProxyApp(HTTPOptions(api_keys=[KEY]), "ns", {"routes": {}})

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as c:
            return await c.get(path)

    response = asyncio.run(get())
    assert response.status_code == status
    if path.startswith(f"/-/dashboard?key={KEY}"):
        # the page trades the key for a session cookie (tests/unit/http/test_dashboard_session.py)
        assert response.headers["location"] == "/-/dashboard" and "HttpOnly" in response.headers["set-cookie"]


def test_the_key_query_is_read_on_dashboard_paths_only() -> None:
    assert api_key_from_query("/-/dashboard/events", {"key": "k"}) == "k"
    assert api_key_from_query("/-/dashboardx", {"key": "k"}) is None
    assert api_key_from_query("/model", {"key": "k"}) is None
