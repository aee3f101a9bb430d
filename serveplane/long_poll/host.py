"""``LongPollHost``: per-key snapshots that listeners wait on; lives in the controller.

Pure asyncio, no Ray: the controller actor forwards its ``listen_for_change`` RPC here.

Invariants:

- every ``notify_changed`` / ``delete_key`` gives its key a new snapshot id
  ``"<generation>.<host instance>:<counter>"``; the instance part is random per host object,
  so ids never repeat across host restarts and a client holding ids from a dead host is
  answered at once by its successor. Ids are ordered (``snapshot_at_least``): by generation
  (the controller passes its epoch, so a successor's ids come after its predecessor's),
  then, within one host, by counter;
- a listener whose id for a listed key differs from the host's (``None`` = never seen) is
  answered at once with *every* such key;
- keys the host does not know (never notified, or deleted and the listener never saw
  them) are waited on, not answered;
- otherwise the listener waits until one of *its* keys changes (a change to another key
  never wakes it), or ``timeout_s * (1 ± jitter)`` passes and it gets
  ``LONG_POLL_TIMEOUT``;
- a waiter that is cancelled (the client gave up on the call) leaves no trace behind.

All methods must run on the event loop thread that serves ``listen_for_change``; the
host does no locking because an async Ray actor runs every method on one loop.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from serveplane.exceptions import InvalidConfigError


def snapshot_at_least(held: str | None, target: str) -> bool:
    """Is the snapshot ``held`` the snapshot ``target`` or a later one of the same key?

    A later generation is later (a successor host recovered every change its predecessor
    published). Two hosts of one generation are unordered: never "at least".
    """
    if held is None:
        return False
    if held == target:
        return True
    held_host, _, held_count = held.rpartition(":")
    target_host, _, target_count = target.rpartition(":")
    held_gen, _, held_instance = held_host.partition(".")
    target_gen, _, target_instance = target_host.partition(".")
    try:
        if int(held_gen) != int(target_gen):
            return int(held_gen) > int(target_gen)
        return held_instance == target_instance and int(held_count) >= int(target_count)
    except ValueError:
        return False


@dataclass(frozen=True)
class UpdatedObject:
    """A key's value at one snapshot; order snapshot ids with ``snapshot_at_least``."""

    snapshot_id: str
    value: Any


class LongPollTimeout:
    """Type of the ``LONG_POLL_TIMEOUT`` sentinel.

    One instance per process; unpickling yields that same instance (``__reduce__`` names the
    module attribute), so ``result is LONG_POLL_TIMEOUT`` holds after a trip through Ray.
    """

    _instance: LongPollTimeout | None = None

    def __new__(cls) -> LongPollTimeout:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> str:
        return "LONG_POLL_TIMEOUT"

    def __repr__(self) -> str:
        return "LONG_POLL_TIMEOUT"


LONG_POLL_TIMEOUT = LongPollTimeout()


@dataclass(frozen=True)
class _Entry:
    """Host-side record of a key; a deleted key keeps a tombstone so listeners learn of it."""

    obj: UpdatedObject
    deleted: bool = False


class LongPollHost:
    """Holds the latest value of each key and answers ``listen_for_change`` calls.

    Waiters are futures registered per key, so ``notify_changed`` wakes exactly the
    listeners of that key and costs O(listeners of the key).
    """

    def __init__(self, timeout_s: float = 30.0, jitter: float = 0.2, generation: int = 0) -> None:
        """``generation`` orders this host's ids after those of hosts with a lower one (the
        controller passes its epoch)."""
        if not timeout_s > 0:
            raise InvalidConfigError(f"long-poll timeout_s is {timeout_s!r}; it must be > 0")
        if not 0 <= jitter < 1:
            raise InvalidConfigError(f"long-poll jitter is {jitter!r}; it must be in [0, 1)")
        self.timeout_s = timeout_s
        self.jitter = jitter
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise InvalidConfigError(f"long-poll generation is {generation!r}; it must be an integer >= 0")
        self.instance_id = f"{generation}.{uuid.uuid4().hex[:12]}"
        self._counter = 0
        self._entries: dict[str, _Entry] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listeners = 0
        self._answered_at_once = 0
        self._timeouts = 0
        # called with the key after each notify_changed / delete_key (the controller's
        # dashboard publisher follows every change with it)
        self.on_notify: Callable[[str], None] | None = None

    # -- publishing -----------------------------------------------------------------
    def notify_changed(self, key: str, value: Any) -> None:
        """Publish ``value`` under a new snapshot id and wake the listeners of ``key`` only."""
        self._entries[key] = _Entry(UpdatedObject(self._next_id(), value))
        self._wake(key)
        if self.on_notify is not None:
            self.on_notify(key)

    def delete_key(self, key: str) -> None:
        """Forget ``key``: listeners that saw it get ``None``; new listeners wait for it again."""
        if key not in self._entries or self._entries[key].deleted:
            return
        self._entries[key] = _Entry(UpdatedObject(self._next_id(), None), deleted=True)
        self._wake(key)
        if self.on_notify is not None:
            self.on_notify(key)

    def snapshot_ids(self, keys: list[str] | tuple[str, ...]) -> dict[str, str]:
        """The current snapshot id of each listed key the host has published (deleted too)."""
        return {key: self._entries[key].obj.snapshot_id for key in keys if key in self._entries}

    def get(self, key: str) -> UpdatedObject | None:
        entry = self._entries.get(key)
        return None if entry is None or entry.deleted else entry.obj

    def keys(self) -> list[str]:
        return sorted(key for key, entry in self._entries.items() if not entry.deleted)

    # -- listening ------------------------------------------------------------------
    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, str | None]
                                ) -> dict[str, UpdatedObject] | LongPollTimeout:
        """Answer with every stale listed key, or wait for one to change, or time out."""
        if not isinstance(keys_to_snapshot_ids, dict):
            raise TypeError(f"listen_for_change takes a dict of key -> snapshot id, "
                            f"not {type(keys_to_snapshot_ids).__name__}")
        stale = self._stale(keys_to_snapshot_ids)
        if stale:
            self._answered_at_once += 1
            return stale
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self._jittered_timeout(), _resolve, woken)
        for key in keys_to_snapshot_ids:
            self._waiters.setdefault(key, set()).add(woken)
        self._listeners += 1
        try:
            await woken
        finally:
            timer.cancel()
            self._listeners -= 1
            for key in keys_to_snapshot_ids:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(woken)
                    if not waiters:
                        del self._waiters[key]
        stale = self._stale(keys_to_snapshot_ids)
        if stale:
            return stale
        self._timeouts += 1
        return LONG_POLL_TIMEOUT

    # -- introspection ----------------------------------------------------------------
    def num_listeners(self) -> int:
        return self._listeners

    def has_listeners(self, key: str) -> bool:
        """Whether a listener is waiting on ``key`` now."""
        return bool(self._waiters.get(key))

    def statistics(self) -> dict[str, Any]:
        return {"instance": self.instance_id, "keys": len(self.keys()), "listeners": self._listeners,
                "snapshots_published": self._counter, "answered_at_once": self._answered_at_once,
                "timeouts": self._timeouts}

    def __repr__(self) -> str:
        return (f"<LongPollHost {self.instance_id} [keys: {len(self.keys())} | "
                f"listeners: {self._listeners} | snapshots: {self._counter}]>")

    # -- internals --------------------------------------------------------------------
    def _next_id(self) -> str:
        self._counter += 1
        return f"{self.instance_id}:{self._counter}"

    def _wake(self, key: str) -> None:
        for woken in self._waiters.get(key, ()):
            _resolve(woken)

    def _jittered_timeout(self) -> float:
        return self.timeout_s * random.uniform(1 - self.jitter, 1 + self.jitter)

    def _stale(self, ids: dict[str, str | None]) -> dict[str, UpdatedObject]:
        stale: dict[str, UpdatedObject] = {}
        for key, client_id in ids.items():
            entry = self._entries.get(key)
            if entry is None or entry.obj.snapshot_id == client_id:
                continue
            if entry.deleted and client_id is None:
                continue  # never seen, now gone: nothing to tell this listener
            stale[key] = entry.obj
        return stale


def _resolve(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
