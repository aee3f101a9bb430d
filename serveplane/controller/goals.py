"""Goals: a client's change completes when its backend reaches the new target.

A pending goal is a persisted record ``goal/<id>``, so that it still completes after a
controller restart. Finished outcomes (the last ``MAX_FINISHED``) live together in one
record, ``goals/finished``, so that a client that waits across a restart learns the outcome
instead of "unknown goal", while recovery reads one key for them however many calls were
ever made. Decisions and commits are separate: ``new``/``finish`` return ``Goal`` values,
``persist`` adds what they change to a change's records, ``commit`` makes them true in
memory and wakes waiters.

Rules:
- a goal completes only when its backend converged on the target it was created for
  (every running replica runs its version and config version), or when its backend is gone
  (a delete goal);
- a goal fails when its backend cannot start its replicas, or when the backend is deleted
  before the change completed;
- an unknown goal id is an error (``GoalNotFoundError``), never a success.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import uuid
from dataclasses import dataclass, replace
from typing import Any, Iterable

from serveplane.exceptions import GoalNotFoundError

MAX_FINISHED = 200
FINISHED_RECORD = "goals/finished"


class GoalState(str, enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Goal:
    id: str
    backend: str
    kind: str  # "create" | "update" | "delete"
    state: GoalState = GoalState.PENDING
    error: str | None = None

    @property
    def name(self) -> str:
        return f"goal/{self.id}"

    def payload(self) -> dict[str, Any]:
        return {"backend": self.backend, "kind": self.kind, "state": self.state.value,
                "error": self.error}

    @staticmethod
    def from_payload(goal_id: str, payload: dict[str, Any]) -> Goal:
        return Goal(goal_id, payload["backend"], payload.get("kind", "update"),
                    GoalState(payload.get("state", "pending")), payload.get("error"))


class GoalManager:
    def __init__(self) -> None:
        self._pending: dict[str, Goal] = {}
        self._finished: collections.OrderedDict[str, Goal] = collections.OrderedDict()
        self._events: dict[str, asyncio.Event] = {}

    # -- decisions (pure) ------------------------------------------------------------
    @staticmethod
    def new(backend: str, kind: str) -> Goal:
        return Goal(uuid.uuid4().hex, backend, kind)

    def pending_for(self, backend: str) -> list[Goal]:
        return [g for g in self._pending.values() if g.backend == backend]

    def latest_pending(self, backend: str) -> str | None:
        pending = self.pending_for(backend)
        return pending[-1].id if pending else None

    @staticmethod
    def finish(goals: Iterable[Goal], error: str | None = None) -> list[Goal]:
        state = GoalState.FAILED if error else GoalState.SUCCEEDED
        return [replace(g, state=state, error=error) for g in goals]

    def persist(self, goals: Iterable[Goal], records: dict[str, Any]) -> None:
        """Add the records that ``goals`` (new or finished) change to ``records``."""
        finished = []
        for goal in goals:
            if goal.state is GoalState.PENDING:
                records[goal.name] = goal.payload()
            else:
                records[goal.name] = None
                finished.append(goal)
        if finished:
            ring = collections.OrderedDict(self._finished)
            for goal in finished:
                ring[goal.id] = goal
            kept = list(ring.values())[-MAX_FINISHED:]
            records[FINISHED_RECORD] = {"goals": {g.id: g.payload() for g in kept}}

    # -- commit ------------------------------------------------------------------------
    def commit(self, goals: Iterable[Goal]) -> None:
        for goal in goals:
            if goal.state is GoalState.PENDING:
                self._pending[goal.id] = goal
                continue
            self._pending.pop(goal.id, None)
            self._finished[goal.id] = goal
            event = self._events.pop(goal.id, None)
            if event is not None:
                event.set()
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

    def load(self, pending: Iterable[Goal], finished: dict[str, Any] | None = None) -> None:
        self._pending.clear()
        self._finished.clear()
        outcomes = (finished or {}).get("goals", {})
        self.commit([*(Goal.from_payload(gid, p) for gid, p in outcomes.items()), *pending])

    # -- views -------------------------------------------------------------------------
    def get(self, goal_id: str) -> Goal:
        goal = self._pending.get(goal_id) or self._finished.get(goal_id)
        if goal is None:
            raise GoalNotFoundError(
                f"goal {goal_id!r} is unknown to this controller; goal ids come from the calls "
                "that change backends (create_backend, update_backend, ...)")
        return goal

    async def wait(self, goal_id: str, timeout_s: float) -> dict[str, Any]:
        goal = self.get(goal_id)
        if goal.state is GoalState.PENDING:
            event = self._events.setdefault(goal_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=timeout_s)
            except asyncio.TimeoutError:
                return {"done": False, "error": None}
            goal = self.get(goal_id)
        return {"done": True, "error": goal.error}

    def pending(self) -> dict[str, str]:
        return {gid: g.backend for gid, g in self._pending.items()}

    def all_names(self) -> list[str]:
        """Every record goals occupy in the store."""
        return [f"goal/{gid}" for gid in self._pending] + ([FINISHED_RECORD] if self._finished else [])

    def finished_payload(self) -> dict[str, Any] | None:
        """What ``goals/finished`` holds (None when nothing finished yet)."""
        return {"goals": {g.id: g.payload() for g in self._finished.values()}} if self._finished else None
