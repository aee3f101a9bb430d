"""Pushes each router's load to the controller, at most twice a second, off the hot path."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

logger = logging.getLogger(__name__)

PERIOD_S = 0.5
_started = False
_lock = threading.Lock()


def ensure_reporter() -> None:
    global _started
    with _lock:
        if not _started:
            threading.Thread(target=_run, name="serveplane-metrics-reporter", daemon=True).start()
            _started = True


def _run() -> None:
    from serveplane.router import all_routers

    controllers: dict[tuple[str, str], Any] = {}
    last_active: dict[str, bool] = {}
    while True:
        time.sleep(PERIOD_S)
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
                key = (router.controller_name, router.namespace or "")
                controller = controllers.get(key)
                if controller is None:
                    controller = ray.get_actor(router.controller_name, namespace=router.namespace)
                    controllers[key] = controller
                controller.record_handle_metrics.remote(router.router_id, report,
                                                        router.statistics())
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                controllers.clear()
                logger.debug("metrics report of %s failed: %r", router.router_id, exc)
