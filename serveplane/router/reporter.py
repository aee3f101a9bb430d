"""Tells the controller what routers see, off the hot path, on one daemon thread.

- each router's load (queued, in flight, rate per backend), at most twice a second, for
  the autoscaler and ``get_metrics``;
- a replica a router saw die, at once, so the controller health-checks it now instead of
  at its next period (it verifies; a live replica stays).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

import ray

logger = logging.getLogger(__name__)

PERIOD_S = 0.5
_started = False
_lock = threading.Lock()
_wake = threading.Event()
_deaths: collections.deque[tuple[str, str, str, str]] = collections.deque(maxlen=1000)


def ensure_reporter() -> None:
    global _started
    with _lock:
        if not _started:
            threading.Thread(target=_run, name="serveplane-metrics-reporter", daemon=True).start()
            _started = True


def report_replica_died(controller_name: str, namespace: str | None, backend: str,
                        actor_name: str) -> None:
    _deaths.append((controller_name, namespace or "", backend, actor_name))
    _wake.set()


def _run() -> None:
    from serveplane.router import all_routers

    controllers: dict[tuple[str, str], Any] = {}
    last_active: dict[str, bool] = {}

    def controller_for(name: str, namespace: str) -> Any:
        controller = controllers.get((name, namespace))
        if controller is None:
            controller = ray.get_actor(name, namespace=namespace or None)
            controllers[(name, namespace)] = controller
        return controller

    while True:
        _wake.wait(PERIOD_S)
        _wake.clear()
        if not ray.is_initialized():
            # e.g. Ray shut down at exit: a Ray call here would start a new instance
            controllers.clear()
            continue
        while _deaths:
            name, namespace, backend, actor_name = _deaths.popleft()
            try:
                controller_for(name, namespace).report_replica_failure.remote(backend, actor_name)
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                controllers.pop((name, namespace), None)
                logger.debug("report of dead replica %s failed: %r", actor_name, exc)
        for router in all_routers():
            if router.controller_name is None:
                continue
            try:
                report = router.load_report()
                active = any(v["queued"] or v["in_flight"] or v["rate"] for v in report.values())
                # report while busy, and once more when it goes quiet
                if not active and not last_active.get(router.router_id):
                    continue
                last_active[router.router_id] = active
                controller_for(router.controller_name, router.namespace or "") \
                    .record_handle_metrics.remote(router.router_id, report, router.statistics())
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                controllers.clear()
                logger.debug("metrics report of %s failed: %r", router.router_id, exc)
