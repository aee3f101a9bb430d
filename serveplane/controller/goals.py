"""Goals: a client's change completes when its backend reaches the new target.

A goal is pending until ``complete`` is called for its backend; pending goals are part of
the checkpoint so that they still complete after a controller restart. A goal id the
controller no longer knows completed before (only completed goals are forgotten).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

MAX_REMEMBERED = 10_000


class GoalManager:
    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # goal id -> backend tag
        self._events: dict[str, asyncio.Event] = {}
        self._done: collections.OrderedDict[str, str | None] = collections.OrderedDict()

    def create(self, backend: str) -> str:
        goal_id = uuid.uuid4().hex
        self._pending[goal_id] = backend
        return goal_id

    def pending_for(self, backend: str) -> list[str]:
        return [g for g, b in self._pending.items() if b == backend]

    def has_pending(self, backend: str) -> bool:
        return backend in self._pending.values()

    def complete(self, backend: str, error: str | None = None) -> list[str]:
        finished = self.pending_for(backend)
        for goal_id in finished:
            del self._pending[goal_id]
            self._done[goal_id] = error
            event = self._events.pop(goal_id, None)
            if event is not None:
                event.set()
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)
        return finished

    def fail(self, backend: str, error: str) -> list[str]:
        """Report a failure to waiters without forgetting the goal: it may still converge."""
        failed = self.pending_for(backend)
        for goal_id in failed:
            self._done[goal_id] = error
            event = self._events.pop(goal_id, None)
            if event is not None:
                event.set()
        return failed

    async def wait(self, goal_id: str, timeout_s: float) -> dict[str, Any]:
        if goal_id not in self._pending or goal_id in self._done:
            return {"done": True, "error": self._done.get(goal_id)}
        event = self._events.setdefault(goal_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            return {"done": False, "error": None}
        return {"done": True, "error": self._done.get(goal_id)}

    def to_checkpoint(self) -> dict[str, str]:
        return dict(self._pending)

    def load_checkpoint(self, data: dict[str, str]) -> None:
        self._pending = dict(data)
