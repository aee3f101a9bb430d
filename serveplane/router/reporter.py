"""Tells the controller what routers see, off the hot path, on one daemon thread.

- each router's load (queued, in flight, rate per backend) and statistics, at most twice a
  second, for the autoscaler and ``get_metrics``: whenever they changed since the router's
  last report (so a burst that starts and ends between two ticks is still reported, and
  so is the quiet state after it), and every tick while the router is busy (the
  autoscaler forgets a report after a few seconds);
- a replica a router saw die, at once, so the controller health-checks it now instead of
  at its next period (it verifies; a live replica stays).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import ray

logger = logging.getLogger(__name__)

PERIOD_S = 0.5
_started = False
_lock = threading.Lock()
_wake = threading.Event()
_deaths: collections.deque[tuple[str, str, str, str]] = collections.deque(maxlen=1000)


@dataclass(frozen=True)
class Figures:
    """What one report of a router says: its load per backend and its statistics."""

    load: Mapping[str, Mapping[str, float]]
    statistics: Mapping[str, Any]

    @property
    def busy(self) -> bool:
        return any(v["queued"] or v["in_flight"] or v["rate"] for v in self.load.values())


def report_due(figures: Figures, last_sent: Figures | None) -> bool:
    """Whether a router with ``figures`` must be reported, given what it last sent.

    Due when anything changed since the last report (a first report included) and on
    every tick while busy, so that the controller's view of a busy router stays fresh.
    """
    return last_sent is None or figures.busy or figures != last_sent


class ReportLedger:
    """The figures last sent per router: decides which routers are due."""

    def __init__(self) -> None:
        self._sent: dict[str, Figures] = {}

    def due(self, router_id: str, figures: Figures) -> bool:
        return report_due(figures, self._sent.get(router_id))

    def sent(self, router_id: str, figures: Figures) -> None:
        self._sent[router_id] = figures

    def keep_only(self, router_ids: Iterable[str]) -> None:
        """Forget routers that are gone (their client shut down)."""
        live = set(router_ids)
        for router_id in [r for r in self._sent if r not in live]:
            del self._sent[router_id]


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
    ledger = ReportLedger()

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
        routers = all_routers()
        ledger.keep_only(r.router_id for r in routers)
        for router in routers:
            if router.controller_name is None:
                continue
            try:
                figures = Figures(router.load_report(), router.statistics())
                if not ledger.due(router.router_id, figures):
                    continue
                controller_for(router.controller_name, router.namespace or "") \
                    .record_handle_metrics.remote(router.router_id, dict(figures.load),
                                                  dict(figures.statistics))
                ledger.sent(router.router_id, figures)
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                controllers.clear()
                logger.debug("metrics report of %s failed: %r", router.router_id, exc)
