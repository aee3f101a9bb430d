"""The data path: handles, responses, the per-endpoint router, replica-choice policies.

Public here::

    Handle(endpoint, source=StaticSource())    # a router of its own on a config source
    get_handle(endpoint, controller_name, namespace)   # the process's shared router
    Response, HandleOptions, QuorumError, Router (base class of user policies), RequestInfo,
    StaticSource, LongPollSource, ConfigSource

One router per (controller, namespace, endpoint) per process; handles unpickled in a Ray
task or actor find it through ``get_handle``.
"""

from __future__ import annotations

import threading

from serveplane.router.handle import Handle, HandleOptions, QuorumError
from serveplane.router.policies import RequestInfo, Router
from serveplane.router.reporter import ensure_reporter
from serveplane.router.response import Response
from serveplane.router.router import EndpointRouter
from serveplane.router.source import ConfigSource, LongPollSource, StaticSource

_routers: dict[tuple[str, str, str], EndpointRouter] = {}
_lock = threading.Lock()


def shared_router(endpoint: str, controller_name: str, namespace: str) -> EndpointRouter:
    """The process's router for an endpoint of a controller, fed by long-poll."""
    key = (controller_name, namespace, endpoint)
    with _lock:
        router = _routers.get(key)
        if router is None:
            router = EndpointRouter(endpoint, LongPollSource(controller_name, namespace),
                                    controller_name=controller_name, namespace=namespace)
            _routers[key] = router
    ensure_reporter()
    return router


def get_handle(endpoint: str, controller_name: str, namespace: str) -> Handle:
    """A handle on the process's shared router for ``endpoint`` (created on first use)."""
    return Handle(shared_router(endpoint, controller_name, namespace))


def all_routers() -> list[EndpointRouter]:
    with _lock:
        return list(_routers.values())


def drop_routers(controller_name: str, namespace: str) -> None:
    """Forget the routers of a controller (its client shut it down)."""
    with _lock:
        dropped = [_routers.pop(k) for k in [k for k in _routers if k[:2] == (controller_name, namespace)]]
    for router in dropped:
        router.close()


def end_session(session_id: str) -> None:
    for router in all_routers():
        router.forget_session(session_id)


__all__ = ["ConfigSource", "EndpointRouter", "Handle", "HandleOptions", "LongPollSource", "QuorumError",
           "RequestInfo", "Response", "Router", "StaticSource", "all_routers", "drop_routers",
           "end_session", "get_handle", "shared_router"]
