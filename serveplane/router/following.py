"""``ConfigFollower``: keeps a router's ``RouterView`` current from its ``ConfigSource``.

It follows the endpoint's key, and for each backend the endpoint uses (traffic and
shadows) that backend's replicas and config. A backend that leaves the endpoint is still
followed while it is one of the ``KEEP_LEFT`` that left last (a canary that becomes a shadow,
or comes back, is routed to at once, with no long-poll round to wait for); older ones are
unsubscribed and forgotten, so a long-lived router follows a bounded set.
Callbacks come on any thread; each swaps whole values in the view under the router's
lock, then ``changed()`` (still under it) lets every queued request look again.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Callable

from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, keys

KEEP_LEFT = 4  # backends that left the endpoint, still followed (the latest ones)

if TYPE_CHECKING:
    from serveplane.router.source import ConfigSource
    from serveplane.router.view import RouterView


class ConfigFollower:
    def __init__(self, endpoint: str, source: ConfigSource, view: RouterView, lock: threading.Lock,
                 changed: Callable[[], None]) -> None:
        self.endpoint = endpoint
        self.source = source
        self._view = view
        self._lock = lock
        self._changed = changed
        self.subscriptions: dict[str, Any] = {}
        self._left: list[str] = []  # backends that left the endpoint, oldest first

    def start(self) -> None:
        self._subscribe(keys.endpoint(self.endpoint), self._on_endpoint)

    def close(self) -> None:
        for token in self.subscriptions.values():
            if token is not None:
                self.source.unsubscribe(token)
        self.subscriptions.clear()

    def _subscribe(self, key: str, callback: Any) -> None:
        if key not in self.subscriptions:
            self.subscriptions[key] = None  # reserved before a synchronous first callback
            self.subscriptions[key] = self.source.subscribe(key, callback)

    def _on_endpoint(self, info: EndpointInfo | None) -> None:
        policy = self._view.policy_for(info) if info is not None else None  # user code: unlocked
        with self._lock:
            used = self._view.set_endpoint(info, policy)
            self._changed()
        if info is None:
            return
        for backend in sorted(used):
            self._subscribe(keys.replicas(backend), functools.partial(self._on_replicas, backend))
            self._subscribe(keys.backend_config(backend), functools.partial(self._on_config, backend))
        own = keys.endpoint(self.endpoint)
        followed = {k.split(":", 1)[1] for k in self.subscriptions if k != own}
        self._left = [b for b in self._left if b in followed and b not in used]
        self._left += sorted(b for b in followed if b not in used and b not in self._left)
        while len(self._left) > KEEP_LEFT:
            self._forget(self._left.pop(0))

    def _forget(self, backend: str) -> None:
        for key in (keys.replicas(backend), keys.backend_config(backend)):
            token = self.subscriptions.pop(key, None)
            if token is not None:
                self.source.unsubscribe(token)
        with self._lock:
            self._view.forget(backend)

    def _on_replicas(self, backend: str, replicas: tuple[ReplicaInfo, ...] | None) -> None:
        with self._lock:
            if keys.replicas(backend) not in self.subscriptions:
                return  # a late update of a backend forgotten meanwhile
            self._view.set_replicas(backend, tuple(replicas or ()))
            self._changed()

    def _on_config(self, backend: str, info: BackendInfo | None) -> None:
        with self._lock:
            if keys.backend_config(backend) not in self.subscriptions:
                return
            self._view.set_config(backend, info.config if info is not None else None)
            self._changed()
