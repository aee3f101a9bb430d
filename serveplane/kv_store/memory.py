"""In-memory store for unit tests.

``memory://`` is a private dict; ``memory://name`` is one dict per name per process, so two
stores opened from the same URL in one process see the same data. Nothing survives the
process, and a pickled store re-opens by URL in the receiving process (a different dict there).

Every operation holds the dict's lock, so ``transact`` is atomic; there is no crash to
survive (nothing survives one), so ``atomic_transactions`` is true.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from serveplane.kv_store.base import Changes, check_changes, check_key, check_value

_SHARED: dict[str, dict[str, bytes]] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_DATA_LOCKS: dict[str, threading.Lock] = {}


class MemoryKVStore:
    atomic_transactions = True

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        name = url[len("memory://"):]
        if name:
            with _SHARED_LOCK:
                self._data = _SHARED.setdefault(name, {})
                # one lock per shared dict: two stores on one name must exclude each other
                self._lock = _SHARED_DATA_LOCKS.setdefault(name, threading.Lock())
        else:
            self._data = {}
            self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url,))

    def __repr__(self) -> str:
        return f"<MemoryKVStore {self.url} [keys: {len(self._data)}]>"

    def get(self, key: str) -> bytes | None:
        check_key(key)
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        value = check_value(check_key(key), value)
        with self._lock:
            self._data[key] = value

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._data.pop(key, None)

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix))

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        new = check_value(check_key(key), new)
        return self._apply(check_changes({key: expected}), {key: new})

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        return self._apply(check_changes(checks), check_changes(writes))

    def _apply(self, checks: Changes, writes: Changes) -> bool:
        with self._lock:
            if any(self._data.get(key) != expected for key, expected in checks.items()):
                return False
            for key, value in writes.items():
                if value is None:
                    self._data.pop(key, None)
                else:
                    self._data[key] = value
            return True

    def close(self) -> None:
        pass
