"""Which endpoint serves an RPC: what the gRPC proxy knows of endpoints, kept by long-poll.

Rules (``EndpointDirectory.resolve``):

- the ``endpoint`` metadata key names the endpoint; one that does not exist is NOT_FOUND, and
  so is a method that no backend of its traffic defines;
- without it, the RPC goes to the one endpoint with a traffic backend (weight > 0) that
  defines a method of the RPC's name; none is NOT_FOUND, several is FAILED_PRECONDITION
  (name one in the metadata).

The method names of a backend are recorded by the controller when the backend's code is
registered (``BackendInfo.method_names``, computed by the client from the class); a backend
recorded before that field existed (``None``) counts as defining every method when named,
and as defining none when the proxy must choose.

Invariant: the directory follows exactly the keys it needs: ``endpoints``, then
``endpoint:<name>`` of every endpoint, then ``backend_config:<b>`` of every backend some
endpoint's traffic uses; it unsubscribes what is no longer used. Callbacks arrive on the
long-poll thread; ``resolve`` runs on the proxy's loop; a lock keeps them apart.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from serveplane.records import BackendInfo, EndpointInfo, keys

UNKNOWN = object()  # a key subscribed whose first value has not arrived yet


class Unresolved(Exception):
    """The RPC cannot be routed: ``code`` is the gRPC status name, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EndpointDirectory:
    def __init__(self, subscribe: Callable[[str, Callable[[Any], None]], Any],
                 unsubscribe: Callable[[Any], None],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._on_change = on_change
        self._lock = threading.Lock()
        self._names: frozenset[str] | None = None
        self._traffic: dict[str, Any] = {}       # endpoint -> weighted backends, or UNKNOWN
        self._methods: dict[str, Any] = {}       # backend -> method names (None: unrecorded), or UNKNOWN
        self._subs: dict[str, Any] = {}          # long-poll key -> subscription

    def start(self) -> None:
        self._follow(keys.ENDPOINTS, self.on_endpoints)

    def __repr__(self) -> str:
        with self._lock:
            names = "?" if self._names is None else len(self._names)
            return (f"<EndpointDirectory [endpoints: {names} | backends: {len(self._methods)} | "
                    f"settled: {self._settled_locked()}]>")

    # -- long-poll callbacks --------------------------------------------------------------
    def on_endpoints(self, names: Iterable[str] | None) -> None:
        new = frozenset(names or ())
        with self._lock:
            old = self._names or frozenset()
            self._names = new
            for name in new - old:
                self._traffic[name] = UNKNOWN
            for name in old - new:
                self._traffic.pop(name, None)
        for name in sorted(new - old):
            self._follow(keys.endpoint(name), self._endpoint_callback(name))
        for name in old - new:
            self._drop(keys.endpoint(name))
        self._sync_backends()

    def _endpoint_callback(self, name: str) -> Callable[[EndpointInfo | None], None]:
        def on_endpoint(info: EndpointInfo | None) -> None:
            with self._lock:
                if self._names is None or name not in self._names:
                    return
                self._traffic[name] = tuple(sorted(b for b, w in info.traffic.items() if w > 0)) \
                    if info is not None else ()
            self._sync_backends()
        return on_endpoint

    def _backend_callback(self, backend: str) -> Callable[[BackendInfo | None], None]:
        def on_backend(info: BackendInfo | None) -> None:
            with self._lock:
                if backend not in self._methods:
                    return
                self._methods[backend] = (frozenset(info.method_names)
                                          if info is not None and info.method_names is not None else None)
            self._on_change()
        return on_backend

    def _sync_backends(self) -> None:
        """Follow the backends some endpoint's traffic uses, and only those."""
        with self._lock:
            used = {b for t in self._traffic.values() if t is not UNKNOWN for b in t}
            added = used - set(self._methods)
            removed = set(self._methods) - used
            for backend in added:
                self._methods[backend] = UNKNOWN
            for backend in removed:
                del self._methods[backend]
        for backend in sorted(added):
            self._follow(keys.backend_config(backend), self._backend_callback(backend))
        for backend in removed:
            self._drop(keys.backend_config(backend))
        self._on_change()

    def _follow(self, key: str, callback: Callable[[Any], None]) -> None:
        if key not in self._subs:
            self._subs[key] = None  # reserved: a first value may be delivered at once
            self._subs[key] = self._subscribe(key, callback)

    def _drop(self, key: str) -> None:
        sub = self._subs.pop(key, None)
        if sub is not None:
            self._unsubscribe(sub)

    def close(self) -> None:
        for key in list(self._subs):
            self._drop(key)

    # -- queries --------------------------------------------------------------------------
    @property
    def settled(self) -> bool:
        """Every key followed has its first value: what ``resolve`` says is complete."""
        with self._lock:
            return self._settled_locked()

    def _settled_locked(self) -> bool:
        return (self._names is not None and all(t is not UNKNOWN for t in self._traffic.values())
                and all(m is not UNKNOWN for m in self._methods.values()))

    def resolve(self, endpoint: str | None, method: str) -> str:
        """The endpoint an RPC of method ``method`` goes to, or ``Unresolved``."""
        with self._lock:
            if endpoint is not None:
                return self._check_named(endpoint, method)
            serving = sorted(name for name, traffic in self._traffic.items()
                             if traffic is not UNKNOWN and any(self._defines(b, method) is True for b in traffic))
        if len(serving) == 1:
            return serving[0]
        if not serving:
            raise Unresolved("NOT_FOUND", f"no endpoint serves method {method!r}: none of their "
                                          "backends defines it; name the endpoint in the 'endpoint' "
                                          "metadata key")
        raise Unresolved("FAILED_PRECONDITION",
                         f"method {method!r} is served by endpoints {', '.join(serving)}; name one in "
                         "the 'endpoint' metadata key")

    def _check_named(self, endpoint: str, method: str) -> str:
        shown = endpoint if len(endpoint) <= 64 else endpoint[:64] + "..."
        if self._names is None or endpoint not in self._names:
            raise Unresolved("NOT_FOUND", f"no endpoint named {shown!r}")
        traffic = self._traffic.get(endpoint, UNKNOWN)
        if traffic is UNKNOWN:
            return endpoint
        answers = [self._defines(b, method) for b in traffic]
        if answers and all(a is False for a in answers):
            raise Unresolved("NOT_FOUND", f"endpoint {shown!r} has no method {method!r}: none of its "
                                          "backends defines it")
        return endpoint

    def _defines(self, backend: str, method: str) -> bool | None:
        """True / False, or None when not known (not yet delivered, or never recorded)."""
        names = self._methods.get(backend, UNKNOWN)
        if names is UNKNOWN or names is None:
            return None
        return method in names
