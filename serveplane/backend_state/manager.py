"""All backends, and which of them the next control tick must visit.

A tick visits only the backends that need it: one marked active (a change was committed,
an action finished, a router reported a failure) or whose own wakeup is due (a replica in
transit is due at once; a converged backend at its next health check or start back-off).
So a tick costs O(backends that changed), not O(all backends).
"""

from __future__ import annotations

import heapq
import math
from typing import Iterator

from serveplane.backend_state.backend import BackendState, WrapperFactory
from serveplane.backend_state.record import BackendRecord
from serveplane.exceptions import BackendNotFoundError
from serveplane.records import replica_actor_name


class BackendStateManager:
    def __init__(self, wrapper_factory: WrapperFactory) -> None:
        self._factory = wrapper_factory
        self._backends: dict[str, BackendState] = {}
        self._wakeups: list[tuple[float, str]] = []  # heap; stale entries skipped by _due_at
        self._due_at: dict[str, float] = {}
        self._autoscaled: set[str] = set()  # so that a tick never scans every backend

    def exists(self, tag: str) -> bool:
        state = self._backends.get(tag)
        return state is not None and not state.record.deleting

    def get(self, tag: str) -> BackendState:
        state = self._backends.get(tag)
        if state is None or state.record.deleting:
            raise BackendNotFoundError(
                f"backend {tag!r} does not exist; known backends: "
                f"{', '.join(self.tags()) or 'none'}")
        return state

    def get_any(self, tag: str) -> BackendState | None:
        """Also returns a backend that is being deleted."""
        return self._backends.get(tag)

    def tags(self) -> list[str]:
        return sorted(t for t, s in self._backends.items() if not s.record.deleting)

    def add(self, record: BackendRecord) -> BackendState:
        state = BackendState(record, self._factory)
        self._backends[record.tag] = state
        self._index(state)
        self.mark_active(record.tag)
        return state

    def set_target(self, state: BackendState, record: BackendRecord) -> None:
        """Commit a new (persisted) target and visit the backend next tick."""
        state.set_target(record)
        self._index(state)
        self.mark_active(state.tag)

    def remove(self, tag: str) -> None:
        self._backends.pop(tag, None)
        self._due_at.pop(tag, None)
        self._autoscaled.discard(tag)

    def _index(self, state: BackendState) -> None:
        if state.record.config.autoscaling_config is not None and not state.record.deleting:
            self._autoscaled.add(state.tag)
        else:
            self._autoscaled.discard(state.tag)

    def autoscaled(self) -> list[BackendState]:
        return [self._backends[tag] for tag in sorted(self._autoscaled)]

    def __iter__(self) -> Iterator[BackendState]:
        return iter(list(self._backends.values()))

    def __len__(self) -> int:
        return len(self._backends)

    # -- scheduling ------------------------------------------------------------------
    def mark_active(self, tag: str) -> None:
        """Visit this backend on the next tick."""
        self.schedule(tag, -math.inf)

    def schedule(self, tag: str, at: float) -> None:
        if tag not in self._backends or at == math.inf:
            return
        current = self._due_at.get(tag)
        if current is None or at < current:
            self._due_at[tag] = at
            heapq.heappush(self._wakeups, (at, tag))

    def due(self, now: float) -> list[BackendState]:
        """Backends to visit now; each leaves the schedule until ``reschedule`` puts it back."""
        out = []
        while self._wakeups and self._wakeups[0][0] <= now:
            at, tag = heapq.heappop(self._wakeups)
            if self._due_at.get(tag) == at:
                del self._due_at[tag]
                out.append(self._backends[tag])
        return out

    def reschedule(self, state: BackendState, now: float) -> None:
        self.schedule(state.tag, state.next_wakeup(now))

    # -- views -----------------------------------------------------------------------
    def all_replica_names(self) -> set[str]:
        return {r.wrapper.actor_name for s in self._backends.values() for r in s.replicas}

    def all_persisted_names(self) -> set[str]:
        """Every replica name some record holds (a superset of the live ones)."""
        return {replica_actor_name(s.tag, t) for s in self._backends.values()
                for t in s.record.replica_tags} | self.all_replica_names()
