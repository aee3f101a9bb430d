"""What routers last reported: one owner, one freshness rule, bounded memory.

Routers push their load (queued, in flight and rate per backend) and their cumulative
statistics (``router/stats.py``) while busy and whenever they change
(``router/reporter.py``). The autoscaler, the rollouts, the dashboard feed and
``get_metrics`` all read them here, under one rule:

- a report is **fresh** for ``ROUTER_REPORT_FRESH_S`` after it arrived; a router silent for
  longer (it died, its process ended, or it is idle and has nothing new to say) counts for
  nobody, and its entry is **dropped**, not merely hidden;
- memory is one entry per router heard from within that window, and never more than
  ``MAX_ROUTERS``: past the cap, the longest-silent router is dropped first (counted in
  ``statistics()["dropped_over_cap"]``).

Entries are kept in the order they last reported, so dropping the stale ones costs only
the ones dropped. Time is read from the injected clock (``serveplane/clock.py``).
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from serveplane.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger(__name__)

ROUTER_REPORT_FRESH_S = 10.0
MAX_ROUTERS = 10_000

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True)
class RouterReport:
    router_id: str
    at: float                                   # the clock's monotonic() when it arrived
    load: Mapping[str, Mapping[str, float]]     # backend -> queued / in_flight / rate
    stats: Mapping[str, Any]                    # the router's statistics(), cumulative


class RouterReports:
    """The last report of every router heard from within ``fresh_s``."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, fresh_s: float = ROUTER_REPORT_FRESH_S,
                 max_routers: int = MAX_ROUTERS) -> None:
        self._clock = clock
        self.fresh_s = fresh_s
        self._max = max_routers
        self._reports: collections.OrderedDict[str, RouterReport] = collections.OrderedDict()
        self._dropped_over_cap = 0

    def record(self, router_id: str, load: Mapping[str, Mapping[str, float]],
               stats: Mapping[str, Any] | None) -> None:
        """``router_id``'s new report; without statistics (a load-only report) its last
        statistics stand."""
        now = self._clock.monotonic()
        previous = self._reports.pop(router_id, None)
        if stats is None:
            stats = previous.stats if previous is not None else _EMPTY
        self._reports[router_id] = RouterReport(router_id, now, load, stats)
        self._drop_stale(now)
        while len(self._reports) > self._max:
            dropped, _ = self._reports.popitem(last=False)
            self._dropped_over_cap += 1
            logger.warning("more than %d routers report to this controller; dropped the longest "
                           "silent (%s)", self._max, dropped)

    def fresh(self) -> list[RouterReport]:
        """The fresh reports, oldest first (stale ones are dropped on the way)."""
        self._drop_stale(self._clock.monotonic())
        return list(self._reports.values())

    def statistics_of(self) -> list[tuple[str, Mapping[str, Any]]]:
        """``(router_id, statistics)`` of every fresh report."""
        return [(r.router_id, r.stats) for r in self.fresh()]

    def load(self, backend: str) -> dict[str, float]:
        """Queued, in flight and rate of ``backend``, summed over the fresh reports."""
        total = {"queued": 0.0, "in_flight": 0.0, "rate": 0.0}
        for report in self.fresh():
            data = report.load.get(backend)
            if data:
                for key in total:
                    total[key] += float(data.get(key, 0.0))
        return total

    def _drop_stale(self, now: float) -> None:
        while self._reports:
            oldest = next(iter(self._reports.values()))
            if now - oldest.at <= self.fresh_s:
                return
            self._reports.popitem(last=False)

    def __len__(self) -> int:
        return len(self._reports)

    def __contains__(self, router_id: object) -> bool:
        return router_id in self._reports

    def statistics(self) -> dict[str, Any]:
        return {"routers": len(self._reports), "fresh_s": self.fresh_s, "max_routers": self._max,
                "dropped_over_cap": self._dropped_over_cap}

    def __repr__(self) -> str:
        return f"<RouterReports {len(self._reports)} routers, fresh for {self.fresh_s:g}s>"
