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

import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any, Iterable

from serveplane.records import RequestMetadata
from serveplane.router import loop as loops
from serveplane.router.shadows import fire_shadows
from serveplane.router.stats import BatchSizes

if TYPE_CHECKING:
    from serveplane.records import ReplicaInfo
    from serveplane.router.response import Response
    from serveplane.router.router import EndpointRouter


class Batcher:
    def __init__(self, router: EndpointRouter) -> None:
        self._router = router
        self._lock = threading.Lock()
        # (method, from HTTP) -> requests of the open batch: an HTTP call never shares a batch
        # (and so its metadata) with a handle call
        self._gathering: dict[tuple[str, bool], list[Response]] = {}
        self._sizes = BatchSizes()  # under _lock

    def add(self, request: Response, size: int, timeout_s: float) -> None:
        request.waiting = concurrent.futures.Future()
        method = (request.method_name, request.http)
        with self._lock:
            batch = self._gathering.get(method)
            if batch is None:
                batch = self._gathering[method] = []
                if size > 1:
                    loop = loops.background_loop()
                    loop.call_soon_threadsafe(loop.call_later, timeout_s, self._flush, method, batch)
            batch.append(request)
            full = len(batch) >= size
            if full:
                del self._gathering[method]
        if full:
            self._dispatch(batch)

    def statistics(self) -> dict[str, Any]:
        """``batches``, ``max_batch_size_seen``, ``avg_batch_size`` and ``batch_sizes``."""
        with self._lock:
            return self._sizes.as_dict()

    def _flush(self, method: tuple[str, bool], batch: list[Response]) -> None:
        with self._lock:
            if self._gathering.get(method) is not batch:
                return  # already dispatched when it filled up
            del self._gathering[method]
        self._dispatch(batch)

    def _dispatch(self, batch: list[Response]) -> None:
        """Each request picks its own backend and replica (its session and shard key pin
        it; ``max_concurrent_queries`` bounds it); requests that landed on one replica go
        as one call, those without a free slot queue on their own."""
        router = self._router
        groups, waiting, cancelled = router.claim_for_batch(batch)
        for request in cancelled:
            request.waiting.set_exception(request.failure)
        for request in waiting:
            gathered = request.waiting
            request.waiting = router.route_later(request)
            request.waiting.add_done_callback(
                lambda done, target=gathered: loops.copy_outcome(done, target))
        for replica, requests in groups:
            self._send(replica, requests)

    def _send(self, replica: ReplicaInfo, batch: list[Response]) -> None:
        router = self._router
        first = batch[0]
        meta = RequestMetadata(first.request_id, router.endpoint, first.method_name, http=first.http,
                               deadline=_earliest(r.wall_deadline for r in batch))
        try:
            ref = router.transport.send_batch(replica, meta, [(r.args, r.kwargs) for r in batch])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for request in batch:
                router.fail(request, exc)
                request.waiting.set_exception(exc)
            return
        with self._lock:
            self._sizes.add(len(batch))
        router.stats.requests[replica.backend] += len(batch)
        router.sent_batch(batch, ref)
        for request in batch:
            request.waiting.set_result(None)
        info = router.endpoint_info
        if info is not None and info.shadows:
            for request in batch:  # shadows go one by one; they never join the batch
                fire_shadows(router, request, info.shadows, request.args, request.kwargs)


def _earliest(deadlines: Iterable[float | None]) -> float | None:
    """A batch runs under the earliest deadline among its requests (none if none has one)."""
    known = [d for d in deadlines if d is not None]
    return min(known) if known else None
