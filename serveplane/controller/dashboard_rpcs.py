"""The controller's dashboard publisher (a part of ``ServeController``).

One guarded task, ``serveplane-dashboard``, publishes the long-poll key ``dashboard`` (see
``serveplane/dashboard/feed.py``): at once after any other key changes (a traffic split, a
replica set, a rollout step: the page follows within a fraction of a second), and every
``PERIOD_S`` for the time series and replica states. It runs only while a proxy follows the
key (a viewer has the page open) and for ``WATCH_GRACE_S`` after; nothing is built, and no
replica is asked anything, while nobody looks. Viewers never call the controller: proxies
fan the one published value out, so N viewers cost what one does.

It reads controller state on the event loop (no lock needed: readers only) and asks serving
replicas for their requests in flight, concurrently, each within ``REPLICA_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Callable

from serveplane.backend_state import BackendStateManager
from serveplane.clock import Clock
from serveplane.controller.autoscaler import Autoscaler
from serveplane.controller.router_reports import RouterReports
from serveplane.dashboard.feed import (
    DASHBOARD_KEY,
    TrafficSeries,
    build_snapshot,
    replica_view,
    same_content,
    shadow_agreement,
)
from serveplane.endpoint_state import EndpointState
from serveplane.long_poll import LongPollHost
from serveplane.redact import redact_url

logger = logging.getLogger(__name__)

PERIOD_S = 1.0
MIN_SPACING_S = 0.05       # a burst of changes is published once
WATCH_GRACE_S = 5.0        # a proxy re-listening between two answers still counts as watching
REPLICA_TIMEOUT_S = 0.5


class DashboardPublisher:
    _backends: BackendStateManager
    _endpoints: EndpointState
    _autoscaler: Autoscaler
    _router_reports: RouterReports
    _time: Clock
    _long_poll: LongPollHost
    _namespace: str
    _kv_url: str
    _checkpoint_warning: str | None
    _shutting_down: bool
    _wall: Callable[[], float]
    _rollout_view: Callable[[str], dict[str, Any]]  # RolloutRPCs

    @property
    def _epoch(self) -> int:  # ServeController's
        raise NotImplementedError

    @property
    def _store(self) -> Any:  # ServeController's
        raise NotImplementedError

    def _init_dashboard(self) -> None:
        self._dashboard_series = TrafficSeries()
        self._dashboard_last: dict[str, Any] | None = None
        self._dashboard_watched_at = -math.inf
        self._dashboard_wake: asyncio.Event | None = None
        self._dashboard_task: asyncio.Task | None = None
        self._long_poll.on_notify = self._dashboard_key_changed

    def _dashboard_key_changed(self, key: str) -> None:
        if key != DASHBOARD_KEY and self._dashboard_wake is not None:
            self._dashboard_wake.set()

    def _ensure_dashboard_loop(self) -> None:
        if self._dashboard_task is None or self._dashboard_task.done():
            self._dashboard_wake = asyncio.Event()
            self._dashboard_task = asyncio.get_running_loop().create_task(
                self._run_dashboard_loop(), name="serveplane-dashboard")
            self._dashboard_task.add_done_callback(self._dashboard_done)

    def _dashboard_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("dashboard publisher crashed: %r; restarted by the next RPC", task.exception())

    async def _run_dashboard_loop(self) -> None:
        wake = self._dashboard_wake
        assert wake is not None
        while not self._shutting_down:
            try:
                await asyncio.wait_for(wake.wait(), PERIOD_S)
            except asyncio.TimeoutError:
                pass
            wake.clear()
            try:
                await self.publish_dashboard()
            except Exception:  # noqa: BLE001 - logged; the next period tries again
                logger.exception("dashboard snapshot failed")
            await asyncio.sleep(MIN_SPACING_S)

    async def publish_dashboard(self, force: bool = False) -> bool:
        """Publish the dashboard key if a proxy follows it and the content changed."""
        now = self._time.monotonic()
        if self._long_poll.has_listeners(DASHBOARD_KEY):
            self._dashboard_watched_at = now
        if not force and now - self._dashboard_watched_at > WATCH_GRACE_S:
            return False
        wall = self._wall()
        reports = self._router_reports.statistics_of()
        if self._dashboard_series.due(wall):
            self._dashboard_series.observe(wall, reports, self._backends.tags())
        snapshot = build_snapshot(
            at=wall, namespace=self._namespace, epoch=self._epoch, kv_store=redact_url(self._kv_url),
            checkpoint_warning=self._checkpoint_warning,
            fencing="atomic" if self._store.atomic else "check-then-write (ray:// GCS KV)",
            refused=len(self._store_refused()), backends=await self._dashboard_backends(),
            endpoints=self._dashboard_endpoints(reports), series=self._dashboard_series.as_dict(),
            scaling_events=[e.as_dict() for e in list(self._autoscaler.events)[-20:]])
        if same_content(self._dashboard_last, snapshot):
            return False
        self._dashboard_last = snapshot
        self._long_poll.notify_changed(DASHBOARD_KEY, snapshot)
        return True

    def _store_refused(self) -> list[Any]:
        persistence = getattr(self, "_persistence", None)
        return list(persistence.refused.report()) if persistence is not None else []

    async def _dashboard_backends(self) -> dict[str, dict[str, Any]]:
        infos = [info for state in self._backends for info in state.serving_infos()]

        async def in_flight(info: Any) -> int | None:
            try:
                metrics = await asyncio.wait_for(info.actor_handle.get_metrics.remote(), REPLICA_TIMEOUT_S)
                return int(metrics.get("active_requests", 0))
            except Exception:  # noqa: BLE001 - no answer in time: shown as unknown
                return None

        answers = dict(zip((i.actor_name for i in infos), await asyncio.gather(*(in_flight(i) for i in infos))))
        out: dict[str, dict[str, Any]] = {}
        for state in self._backends:
            record = state.record
            gpus = float(record.actor_options.get("num_gpus", 0) or 0)
            load = self._autoscaler.aggregate(state.tag)
            replicas = [replica_view(r.tag, r.state.value, r.wrapper.node_id,
                                     getattr(r.wrapper, "health_failures", 0) > 0, gpus,
                                     answers.get(r.wrapper.actor_name))
                        for r in sorted(state.replicas, key=lambda r: r.tag)]
            status = state.status()
            out[state.tag] = {"target_replicas": status["target_replicas"], "version": status["version"],
                              "failure": status["failure"], "deleting": record.deleting,
                              "autoscaling": record.config.autoscaling_config is not None,
                              "max_concurrent_queries": record.config.max_concurrent_queries,
                              "queued": load["queued"], "in_flight": load["in_flight"],
                              "replicas": replicas}
        return out

    def _dashboard_endpoints(self, reports: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
        from serveplane.metrics import merge_router_reports

        shadows = merge_router_reports(stats for _, stats in reports)["shadows"]
        out: dict[str, dict[str, Any]] = {}
        for name, record in self._endpoints.records().items():
            view = record.public()
            view["shadow_agreement"] = {b: shadow_agreement(shadows, b) for b in record.shadows}
            view["rollout"] = self._rollout_view(name) if record.rollout is not None else None
            out[name] = view
        return out
