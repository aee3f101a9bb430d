"""``Holds``: replicas a router stops picking, for good or for a while.

- dead (``hide``): gone for good; reported to the controller, which verifies with a probe;
- unreachable (``back_off``): skipped for a short period that grows while it lasts;
- refused as full or draining (``refused``): held back 5 ms, doubling to 250 ms.

When a period ends, every queued request looks again: one timer on the background loop,
at least ``WAKE_MIN_S`` away (a period ending below the clock's resolution must not spin).
All methods run under the router's lock.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from serveplane.records import ReplicaInfo
from serveplane.router import loop as loops
from serveplane.router.reporter import report_replica_died

if TYPE_CHECKING:
    from serveplane.router.view import RouterView

logger = logging.getLogger(__name__)

WAKE_MIN_S = 0.001


class Holds:
    def __init__(self, endpoint: str, view: RouterView, lock: threading.Lock, wake_all: Callable[[], None],
                 controller_name: str | None, namespace: str | None) -> None:
        self.endpoint = endpoint
        self._view = view
        self._lock = lock
        self._wake_all = wake_all
        self._controller_name = controller_name
        self._namespace = namespace
        self._end_pending = False  # a timer will wake the queue when a hold ends

    def hide(self, replica: ReplicaInfo) -> None:
        if self._view.mark_dead(replica):
            logger.info("replica %s of endpoint %r died; routing around it", replica.actor_name, self.endpoint)
            if self._controller_name is not None:
                report_replica_died(self._controller_name, self._namespace, replica.backend, replica.actor_name)
        self._wake_all()

    def back_off(self, replica: ReplicaInfo) -> None:
        period = self._view.backoff.unavailable(replica.actor_name)
        self._view.changed()
        logger.info("replica %s of endpoint %r is unreachable; skipping it for %.2fs",
                    replica.actor_name, self.endpoint, period)
        self._schedule_end()

    def refused(self, replica: ReplicaInfo) -> None:
        self._view.slots.refused(replica.actor_name)
        self._view.changed()
        self._schedule_end()

    def _schedule_end(self) -> None:
        """Wake the queue when the first hold ends (queued requests may use that replica)."""
        view = self._view
        ends = [t for t in (view.backoff.next_end_in(), view.slots.full.next_end_in()) if t is not None]
        if not ends or self._end_pending:
            return
        self._end_pending = True
        loop = loops.background_loop()
        loop.call_soon_threadsafe(loop.call_later, max(min(ends), WAKE_MIN_S), self._on_end)

    def _on_end(self) -> None:
        with self._lock:
            self._end_pending = False
            self._view.changed()
            self._wake_all()
            self._schedule_end()  # the next period (or this one, if the timer ran early)
