"""``LongPollHost``: per-key snapshots that listeners wait on (lives in the controller).

Invariants:
- a listener whose id for any listed key differs from the host's is answered at once with
  *every* such key (ids are opaque and differ across host instances, so a client that
  survived a host restart always catches up);
- otherwise it waits until one of *its* keys changes, or a jittered timeout passes and it
  gets ``LONG_POLL_TIMEOUT``; a change to another key never wakes it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UpdatedObject:
    snapshot_id: str
    value: Any


class LongPollTimeout:
    """Singleton sentinel; keeps its identity through pickling (``is`` works after Ray)."""

    _instance: LongPollTimeout | None = None

    def __new__(cls) -> LongPollTimeout:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[Any, tuple]:
        return (LongPollTimeout, ())

    def __repr__(self) -> str:
        return "LONG_POLL_TIMEOUT"


LONG_POLL_TIMEOUT = LongPollTimeout()


class LongPollHost:
    def __init__(self, timeout_s: float = 30.0, jitter: float = 0.2) -> None:
        self.timeout_s = timeout_s
        self.jitter = jitter
        self._instance = uuid.uuid4().hex[:12]
        self._counter = 0
        self._objects: dict[str, UpdatedObject] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def notify_changed(self, key: str, value: Any) -> None:
        self._counter += 1
        self._objects[key] = UpdatedObject(f"{self._instance}:{self._counter}", value)
        for event in self._waiters.get(key, ()):
            event.set()

    def get(self, key: str) -> UpdatedObject | None:
        return self._objects.get(key)

    def keys(self) -> list[str]:
        return sorted(self._objects)

    def _stale(self, ids: dict[str, str | None]) -> dict[str, UpdatedObject]:
        out = {}
        for key, client_id in ids.items():
            obj = self._objects.get(key)
            if obj is not None and obj.snapshot_id != client_id:
                out[key] = obj
        return out

    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, str | None]
                                ) -> dict[str, UpdatedObject] | LongPollTimeout:
        stale = self._stale(keys_to_snapshot_ids)
        if stale:
            return stale
        event = asyncio.Event()
        for key in keys_to_snapshot_ids:
            self._waiters.setdefault(key, set()).add(event)
        timeout = self.timeout_s * random.uniform(1 - self.jitter, 1 + self.jitter)
        try:
            await asyncio.wait_for(event.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            return LONG_POLL_TIMEOUT
        finally:
            for key in keys_to_snapshot_ids:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[key]
        return self._stale(keys_to_snapshot_ids) or LONG_POLL_TIMEOUT

    def num_listeners(self) -> int:
        return len({id(e) for waiters in self._waiters.values() for e in waiters})
