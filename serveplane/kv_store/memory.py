"""In-memory store for unit tests. ``memory://name`` shares one dict per name per process."""

from __future__ import annotations

import threading

_SHARED: dict[str, dict[str, bytes]] = {}
_SHARED_LOCK = threading.Lock()


class MemoryKVStore:
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        name = url[len("memory://"):]
        self._lock = threading.Lock()
        if name:
            with _SHARED_LOCK:
                self._data = _SHARED.setdefault(name, {})
        else:
            self._data = {}

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = bytes(value)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix))

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        with self._lock:
            if self._data.get(key) != expected:
                return False
            self._data[key] = bytes(new)
            return True

    def close(self) -> None:
        pass
