"""Router-side batching: stateless calls of one method gathered in the caller's process.

When an endpoint sets ``batch_size``, calls (never streams) are gathered per method until
the batch is full or ``batch_timeout_s`` passes. Then each request picks its backend and
replica as it would alone (sessions and shard keys pin it, ``max_concurrent_queries``
bounds it), and the requests that landed on one replica go to it as one ``handle_batch``
actor call. Each request keeps its own slot and its own answer (the batch's ref holds one
``(ok, value)`` per call); a request whose batch's replica dies (or refuses it) is retried
on its own. Requests without a free slot queue on their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any, Iterable

from serveplane.records import RequestMetadata
from serveplane.router import loop as loops
from serveplane.router.shadows import fire_shadows
from serveplane.router.stats import BatchSizes

if TYPE_CHECKING:
    from serveplane.records import ReplicaInfo
    from serveplane.router.request import RoutedRequest
    from serveplane.router.router import EndpointRouter


class Batcher:
    def __init__(self, router: EndpointRouter) -> None:
        self._router = router
        self._lock = threading.Lock()
        # (method, from HTTP) -> requests of the open batch: an HTTP call never shares a batch
        # (and so its metadata) with a handle call
        self._gathering: dict[tuple[str, bool], _Gathered] = {}
        self._sizes = BatchSizes()  # under _lock

    def add(self, request: RoutedRequest, size: int, timeout_s: float) -> None:
        method = (request.method_name, request.http)
        with self._lock:
            batch = self._gathering.get(method)
            if batch is None:
                batch = self._gathering[method] = _Gathered()
                if size > 1:
                    loop = loops.background_loop()
                    loop.call_soon_threadsafe(loop.call_later, timeout_s, self._flush, method, batch)
            batch.requests.append(request)
            request.waiting = batch.ready  # one future for the whole batch
            full = len(batch.requests) >= size
            if full:
                del self._gathering[method]
        if full:
            self._dispatch(batch)

    def statistics(self) -> dict[str, Any]:
        """``batches``, ``max_batch_size_seen``, ``avg_batch_size`` and ``batch_sizes``."""
        with self._lock:
            return self._sizes.as_dict()

    def _flush(self, method: tuple[str, bool], batch: _Gathered) -> None:
        with self._lock:
            if self._gathering.get(method) is not batch:
                return  # already dispatched when it filled up
            del self._gathering[method]
        self._dispatch(batch)

    def _dispatch(self, batch: _Gathered) -> None:
        """Each request picks its own backend and replica (its session and shard key pin
        it; ``max_concurrent_queries`` bounds it); requests that landed on one replica go
        as one call, those without a free slot queue on their own. Then the batch's one
        future wakes every awaiter: each finds its request sent, failed (its ``failure``),
        cancelled, or routing on its own (a new ``waiting``)."""
        router = self._router
        try:
            groups, waiting = self._claim(batch.requests)
            for request in waiting:
                request.waiting = router.route_later(request)
            for replica, requests in groups:
                self._send(replica, requests)
        finally:
            batch.ready.set_result(None)

    def _claim(self, batch: list[RoutedRequest]) -> tuple[
            list[tuple[ReplicaInfo, list[RoutedRequest]]], list[RoutedRequest]]:
        """Slots for a gathered batch, each request picked on its own: the requests grouped
        by replica, and those that must wait (those cancelled meanwhile are left out)."""
        router = self._router
        groups: dict[str, tuple[ReplicaInfo, list[RoutedRequest]]] = {}
        waiting = []
        with router.lock:
            for request in batch:
                if request.state.final:
                    continue
                replica = router.view.pick(request)
                if replica is None:
                    waiting.append(request)
                else:
                    router.ledger.claim(request, replica)
                    groups.setdefault(replica.actor_name, (replica, []))[1].append(request)
        return list(groups.values()), waiting

    def _sent(self, batch: list[RoutedRequest], ref: Any) -> None:
        """The requests of ``batch`` are running as one call (``ref`` answers them all)."""
        router = self._router
        call = BatchCall(ref, batch)
        with router.lock:
            for index, request in enumerate(batch):
                request.batch_index = index
                request.batch = call
                request.attempts = 1
                if not request.state.final:  # one cancelled while it was sent: slot freed already
                    request.sent(ref)
            cancel = call.all_final()
        if cancel:
            router.transport.cancel(ref)

    def _send(self, replica: ReplicaInfo, batch: list[RoutedRequest]) -> None:
        router = self._router
        first = batch[0]
        meta = RequestMetadata(first.request_id, router.endpoint, first.method_name, http=first.http,
                               deadline=_latest(r.wall_deadline for r in batch))
        try:
            ref = router.transport.send_batch(replica, meta, [(r.args, r.kwargs) for r in batch])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for request in batch:
                router.fail(request, exc)
            return
        with self._lock:
            self._sizes.add(len(batch))
        router.stats.requests[replica.backend] += len(batch)
        self._sent(batch, ref)
        info = router.endpoint_info
        if info is not None and info.shadows:
            for request in batch:  # shadows go one by one; they never join the batch
                fire_shadows(router, request, info.shadows, request.args, request.kwargs)


class _Gathered:
    """A batch while it gathers: its requests and the one future they all wait on."""

    __slots__ = ("requests", "ready")

    def __init__(self) -> None:
        self.requests: list[RoutedRequest] = []
        self.ready: concurrent.futures.Future = concurrent.futures.Future()


def _latest(deadlines: Iterable[float | None]) -> float | None:
    """A batch runs under the latest deadline among its requests (none if one has none):
    a batch-mate's short deadline must not make the replica refuse the others. Each
    request's own deadline is still its own: its awaiter gives up, alone, when it passes."""
    latest = None
    for deadline in deadlines:
        if deadline is None:
            return None
        latest = deadline if latest is None else max(latest, deadline)
    return latest


class BatchCall:
    """The one actor call of a router-side batch. Its callers on one event loop share one
    await of its ref (one Ray completion callback per loop, not one per caller); each
    caller waits through a shield, so cancelling one caller leaves the others waiting."""

    __slots__ = ("ref", "requests", "_tasks")

    def __init__(self, ref: Any, requests: list[RoutedRequest]) -> None:
        self.ref = ref
        self.requests = requests
        self._tasks: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}

    def value(self) -> Any:
        loop = asyncio.get_running_loop()
        task = self._tasks.get(loop)
        if task is None:
            task = self._tasks[loop] = asyncio.ensure_future(_awaited(self.ref))
        return asyncio.shield(task)

    def all_final(self) -> bool:
        """Every request of the batch is final: nobody wants its answer any more."""
        return all(r.state.final for r in self.requests)

    @staticmethod
    def item(value: Any, index: int | None) -> Any:
        """One caller's answer in the batch's value (an error as the exception itself)."""
        if isinstance(value, BaseException) or index is None:
            return value
        ok, item = value[index]
        return item if ok else (item if isinstance(item, BaseException) else RuntimeError(item))

    @staticmethod
    def unpack(value: Any, index: int) -> Any:
        ok, item = value[index]
        if not ok:
            raise item
        return item


async def _awaited(ref: Any) -> Any:
    return await ref
