"""Where a router gets its config: long-poll from the controller, or pushed by tests."""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol


class ConfigSource(Protocol):
    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Any: ...
    def unsubscribe(self, token: Any) -> None: ...


class StaticSource:
    """Tests push values with ``set``; callbacks run synchronously in the caller."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._subs: dict[str, list[Callable[[Any], None]]] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._values[key] = value
            subs = list(self._subs.get(key, ()))
        for cb in subs:
            cb(value)

    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Any:
        with self._lock:
            self._subs.setdefault(key, []).append(callback)
            known = key in self._values
            value = self._values.get(key)
        if known:
            callback(value)
        return (key, callback)

    def unsubscribe(self, token: Any) -> None:
        key, callback = token
        with self._lock:
            if callback in self._subs.get(key, []):
                self._subs[key].remove(callback)


class LongPollSource:
    def __init__(self, controller_name: str, namespace: str) -> None:
        from serveplane.long_poll import LongPollClient

        self.controller_name = controller_name
        self.namespace = namespace
        self._client = LongPollClient.get_or_create(controller_name, namespace)

    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Any:
        from serveplane.long_poll import LongPollClient

        if self._client._stopped:
            self._client = LongPollClient.get_or_create(self.controller_name, self.namespace)
        return self._client.subscribe(key, callback)

    def unsubscribe(self, token: Any) -> None:
        self._client.unsubscribe(token)
