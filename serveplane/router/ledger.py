"""``Ledger``: a router's accounts of its requests: slots, queue places, waiters, outcomes.

Everything here runs under the router's lock and moves requests only through their own
transitions (``RoutedRequest``). It keeps:

- the requests that hold a slot (``running``), and the slot table they hold them in;
- the wait queue: FIFO waiters and per-backend counts against ``max_queued_requests``;
  a freed slot is *assigned* to the first waiter that may use it (the request records it;
  its waiter's future is only a wake-up);
- each request's end, once, and its backend's figures for it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NoReturn

from serveplane.exceptions import BackPressureError, NoReplicasError
from serveplane.records import ReplicaInfo
from serveplane.router.request import Outcome, RoutedRequest
from serveplane.router.state import RequestState
from serveplane.router.waitqueue import WaitQueue

if TYPE_CHECKING:
    from serveplane.clock import Clock
    from serveplane.router.stats import RouterStats
    from serveplane.router.view import RouterView

UNKNOWN_BACKEND = ""  # queue key of requests that wait for the endpoint's config


class Waiter:
    """A queued request and the future its routing coroutine sleeps on (a wake-up only:
    what it got is in the request's own state)."""

    __slots__ = ("request", "loop", "future")

    def __init__(self, request: RoutedRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()


class Ledger:
    def __init__(self, endpoint: str, view: RouterView, stats: RouterStats, clock: Clock) -> None:
        self.endpoint = endpoint
        self.view = view
        self.stats = stats
        self.clock = clock
        self.queue: WaitQueue[Waiter] = WaitQueue()
        self.running: dict[RoutedRequest, None] = {}  # requests holding a slot (insertion order)

    def claim(self, request: RoutedRequest, replica: ReplicaInfo) -> None:
        self.view.slots.claim(replica.actor_name)
        request.assign(replica)
        self.running[request] = None

    def release(self, request: RoutedRequest, hand_over: bool = True) -> None:
        """Free ``request``'s slot, once; hand it to the first queued request that fits."""
        replica = request.give_back_slot()
        if replica is None:
            return
        self.running.pop(request, None)
        view = self.view
        view.slots.release(replica.actor_name)
        if hand_over and self.queue and view.free_slot_taker_allowed(replica):
            waiter = self.queue.take_first(
                lambda w: w.request.state is RequestState.QUEUED and view.fits(w.request, replica))
            if waiter is not None:
                self.claim(waiter.request, replica)
                wake(waiter)

    def wake_all(self) -> None:
        """Replicas, config or traffic changed: every queued request looks again."""
        for waiter in self.queue.take_all():
            wake(waiter)

    def end(self, request: RoutedRequest, state: RequestState, outcome: Outcome | None,
            failure: BaseException | None = None, ok: bool = True) -> bool:
        """``request`` is final; its backend's figures count it (once)."""
        if not request.end(state, outcome, failure):
            return False
        self.release(request)
        backend = request.backend
        if outcome is not None and backend is not None:
            latency = self.clock.monotonic() - request.started
            if outcome is Outcome.ANSWERED:
                self.stats.outcomes.answered(backend, latency, ok)
            else:
                self.stats.outcomes.ended(backend, outcome.value, latency, ok)
        return True

    def reserve(self, request: RoutedRequest) -> None:
        """Count ``request`` against its backend's ``max_queued_requests``, or refuse it."""
        backend = request.backend or UNKNOWN_BACKEND
        view = self.view
        if backend not in view.configs or backend not in view.replicas:
            backend = UNKNOWN_BACKEND  # waiting to hear of the backend, not for its capacity
        limit = view.config(backend).max_queued_requests
        if not self.queue.reserve(backend, limit):
            self.stats.back_pressure_rejections += 1
            again = " (it was going again: its last replica failed or refused it)" \
                if request.previous_replica is not None else ""
            error = BackPressureError(
                f"endpoint {self.endpoint!r} has {self.queue.count(backend)} requests queued for "
                f"backend {backend or '(not yet known)'!r}, the limit (max_queued_requests) is "
                f"{limit}{again}; every replica is at max_concurrent_queries: retry later or add replicas")
            self.end(request, RequestState.FAILED, Outcome.REFUSED, error)
            raise error
        request.queue(backend)

    def unreserve(self, request: RoutedRequest) -> None:
        backend = request.unreserve()
        if backend is not None:
            self.queue.unreserve(backend)

    def expire(self, request: RoutedRequest) -> NoReturn:
        """Its deadline passed while it waited for a slot: it fails and never runs."""
        what = "deadline" if request.deadline is not None else "queue timeout"
        error = NoReplicasError(
            f"no replica of endpoint {self.endpoint!r} (backend {request.backend or '(not yet known)'!r}) "
            f"had a free slot within {request.queue_timeout_s:.3g}s ({what}); it never ran: check that the "
            "backend has running replicas, or raise timeout_s")
        self.end(request, RequestState.FAILED, Outcome.EXPIRED, error)
        raise error

    def unwatched(self) -> list[RoutedRequest]:
        """Requests in flight whose completion nobody may look at soon.

        A slot is normally freed when the caller reads the answer (no extra callback per
        request). Once requests queue, a slot must not wait for a caller that reads later
        (or never): every unary request in flight then gets a completion callback that
        frees its slot; so does one whose ``Response`` was dropped. A stream frees its slot
        when it ends, is cancelled or is dropped (Ray's generators have no such callback).
        """
        everyone = bool(self.queue)
        todo = [r for r in self.running if not r.watched and r.ref is not None and not r.stream
                and (everyone or r.abandoned)]
        for request in todo:
            request.watched = True
        return todo


def wake(waiter: Waiter) -> None:
    try:
        waiter.loop.call_soon_threadsafe(set_none, waiter.future)
    except RuntimeError:
        pass  # that loop is closed: its waiter is gone with it


def set_none(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
