"""The life of one request, as an explicit state machine owned by its router.

::

    QUEUED ──> ASSIGNED ──> RUNNING ──> STREAMING ──> DONE
       │          │            │  ╲          │
       │          │            │   ╲─> QUEUED / ASSIGNED   (retried, or refused as full)
       └──────────┴────────────┴──────────┴──> FAILED | CANCELLED

A request starts NEW, is QUEUED while it waits for a slot, ASSIGNED once it holds one
(its replica is chosen), RUNNING once its actor call is sent, STREAMING after a stream's
first chunk. DONE, FAILED and CANCELLED are final: nothing moves a request out of them.
Only ``EndpointRouter`` moves a request (under its lock); everything else reads.
"""

from __future__ import annotations

import enum


class RequestState(str, enum.Enum):
    NEW = "new"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({RequestState.DONE, RequestState.FAILED, RequestState.CANCELLED})

ALLOWED: dict[RequestState, frozenset[RequestState]] = {
    RequestState.NEW: frozenset({RequestState.QUEUED, RequestState.ASSIGNED, *_FINAL}),
    RequestState.QUEUED: frozenset({RequestState.QUEUED, RequestState.ASSIGNED, *_FINAL}),
    RequestState.ASSIGNED: frozenset({RequestState.RUNNING, RequestState.QUEUED, *_FINAL}),
    RequestState.RUNNING: frozenset({RequestState.STREAMING, RequestState.QUEUED, RequestState.ASSIGNED,
                                     *_FINAL}),
    RequestState.STREAMING: frozenset({*_FINAL}),
    RequestState.DONE: frozenset(),
    RequestState.FAILED: frozenset(),
    RequestState.CANCELLED: frozenset(),
}


class IllegalTransition(AssertionError):
    pass


def check(old: RequestState, new: RequestState) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransition(f"a request cannot go from {old.value} to {new.value}")
