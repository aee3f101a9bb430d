"""Shadow traffic: a copy of some requests to other backends, never waited for.

A shadow takes a free slot on the least loaded replica of its backend or is dropped
(counted), never queued; its answer is compared with the primary's when both are in,
on whichever thread finishes last. Nothing here can delay, change or fail the primary.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from serveplane import tracing
from serveplane.records import ReplicaInfo
from serveplane.router import loop as loops
from serveplane.router.stats import ShadowOutcome
from serveplane.router.streamwire import stream_items

if TYPE_CHECKING:
    from serveplane.router.request import RoutedRequest
    from serveplane.router.router import EndpointRouter


def fire_shadows(router: EndpointRouter, request: RoutedRequest, shadows: dict[str, float],
                 args: tuple, kwargs: dict) -> None:
    for backend, proportion in shadows.items():
        if random.random() >= proportion:
            continue
        stats = router.stats.shadow(backend)
        replica = _claim(router, backend)
        with router.stats_lock:
            stats.count += 1
            if replica is None:
                stats.dropped += 1
        if replica is None:
            continue
        outcome = ShadowOutcome(stats, router.stats_lock, router.clock.monotonic)
        request.shadows.append(outcome)
        meta = request.metadata(is_shadow=True)  # its deadline, session and shard key too
        if tracing.ENABLED:
            meta = tracing.shadow_span(meta, request.trace, backend, replica)
        done = _Done(router, replica, outcome)
        try:
            if request.stream:  # a stream's shadow is a stream, read whole and compared whole
                stream = router.transport.send_stream(replica, meta, args, kwargs)
                loops.start(_read_shadow_stream(router.transport, stream, done),
                            f"serveplane-shadow-{request.request_id}")
                continue
            ref = router.transport.send(replica, meta, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - a shadow never fails its primary
            done(exc)
            continue
        router.transport.on_completed(ref, done)


def _claim(router: EndpointRouter, backend: str) -> ReplicaInfo | None:
    """The least loaded replica of ``backend`` with a free slot, claimed; shadows never wait."""
    with router.lock:
        replica = router.view.shadow_replica(backend)
        if replica is not None:
            router.view.slots.claim(replica.actor_name)
        return replica


async def _read_shadow_stream(transport: Any, stream: Any, done: _Done) -> None:
    """Read a shadow's stream to its end; its chunks, as one list, are its answer."""
    chunks: list[Any] = []
    try:
        while True:
            try:
                chunk = await transport.next_chunk(stream)
            except StopAsyncIteration:
                break
            chunks.extend(stream_items(chunk))
    except BaseException as exc:  # noqa: BLE001 - a shadow never fails its primary
        done(exc)
        if not isinstance(exc, Exception):
            raise
        return
    done(chunks)


class _Done:
    __slots__ = ("router", "replica", "outcome")

    def __init__(self, router: EndpointRouter, replica: ReplicaInfo | None, outcome: ShadowOutcome) -> None:
        self.router = router
        self.replica = replica
        self.outcome = outcome

    def __call__(self, value: Any) -> None:
        replica, self.replica = self.replica, None
        if replica is None:
            return  # once
        router = self.router
        with router.lock:
            router.view.slots.release(replica.actor_name)
            if router.queue:
                router.ledger.wake_all()
        self.outcome.on_shadow(value)
