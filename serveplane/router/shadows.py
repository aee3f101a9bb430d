"""Shadow traffic: a copy of some requests to other backends, never waited for.

A shadow takes a free slot on the least loaded replica of its backend or is dropped
(counted), never queued; its answer is compared with the primary's when both are in,
on whichever thread finishes last. Nothing here can delay, change or fail the primary.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from serveplane import tracing
from serveplane.records import ReplicaInfo, RequestMetadata
from serveplane.router.stats import ShadowOutcome

if TYPE_CHECKING:
    from serveplane.router.response import Response
    from serveplane.router.router import EndpointRouter


def fire_shadows(router: EndpointRouter, request: Response, shadows: dict[str, float],
                 args: tuple, kwargs: dict) -> None:
    for backend, proportion in shadows.items():
        if random.random() >= proportion:
            continue
        stats = router.stats.shadow(backend)
        replica = router.claim_for_shadow(backend)
        with router.stats_lock:
            stats.count += 1
            if replica is None:
                stats.dropped += 1
        if replica is None:
            continue
        outcome = ShadowOutcome(stats, router.stats_lock, router.clock.monotonic)
        request.shadows.append(outcome)
        meta = RequestMetadata(request.request_id, router.endpoint, request.method_name,
                               request.session_id, request.shard_key, is_shadow=True,
                               http=request.http)
        if tracing.ENABLED:
            meta = tracing.shadow_span(meta, request.trace, backend, replica)
        try:
            ref = router.transport.send(replica, meta, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - a shadow never fails its primary
            router.release_shadow(replica)
            outcome.on_shadow(exc)
            continue
        router.transport.on_completed(ref, _Done(router, replica, outcome))


class _Done:
    __slots__ = ("router", "replica", "outcome")

    def __init__(self, router: EndpointRouter, replica: ReplicaInfo, outcome: ShadowOutcome) -> None:
        self.router = router
        self.replica = replica
        self.outcome = outcome

    def __call__(self, value: Any) -> None:
        self.router.release_shadow(self.replica)
        self.outcome.on_shadow(value)
