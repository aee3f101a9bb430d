"""Where a router gets its config: long-poll from the controller, or pushed by tests.

A router reads three kinds of keys (see ``serveplane.records.keys``): ``endpoint:<name>``,
``replicas:<backend>`` and ``backend_config:<backend>``. Values are immutable records; a
callback may run on any thread, and the router swaps whole values under its lock.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol


class ConfigSource(Protocol):
    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(value)`` with the current value (if known) and every later one."""

    def unsubscribe(self, token: Any) -> None:
        """Stop the subscription ``subscribe`` returned; idempotent."""


class StaticSource:
    """Values pushed by hand with ``set``; callbacks run synchronously in the caller.

    Stands in for the controller in tests and benchmarks: ``set("replicas:b", (...))`` is
    what a long-poll update would deliver.
    """

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = dict(values or {})
        self._subs: dict[str, list[Callable[[Any], None]]] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._values[key] = value
            subs = list(self._subs.get(key, ()))
        for callback in subs:
            callback(value)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._values.get(key)

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
            subs = self._subs.get(key, [])
            if callback in subs:
                subs.remove(callback)

    def __repr__(self) -> str:
        with self._lock:
            return f"<StaticSource keys: {', '.join(sorted(self._values)) or 'none'}>"


class LongPollSource:
    """The process's shared ``LongPollClient`` for a controller (callbacks on its thread)."""

    def __init__(self, controller_name: str, namespace: str | None) -> None:
        self.controller_name = controller_name
        self.namespace = namespace
        self._lock = threading.Lock()
        self._client = self._current_client()

    def _current_client(self) -> Any:
        from serveplane.long_poll import LongPollClient

        return LongPollClient.get_or_create(self.controller_name, self.namespace)

    def subscribe(self, key: str, callback: Callable[[Any], None]) -> Any:
        with self._lock:
            if self._client.stopped:  # e.g. client.shutdown() stopped it; take the new one
                self._client = self._current_client()
            client = self._client
        return client, client.subscribe(key, callback)

    def unsubscribe(self, token: Any) -> None:
        client, subscription = token
        client.unsubscribe(subscription)

    def __repr__(self) -> str:
        return f"<LongPollSource {self.controller_name!r} ns={self.namespace!r}>"
