"""Handles, responses, the per-endpoint router, replica-choice policies, sessions."""

from __future__ import annotations

import threading
from typing import Any

from serveplane.router.handle import Handle, HandleOptions, QuorumError, Response
from serveplane.router.policies import RequestInfo, Router
from serveplane.router.reporter import ensure_reporter
from serveplane.router.router import EndpointRouter
from serveplane.router.source import LongPollSource, StaticSource

_routers: dict[tuple[str, str, str], EndpointRouter] = {}
_lock = threading.Lock()


def get_handle(endpoint: str, controller_name: str, namespace: str) -> Handle:
    """One router per endpoint per process, fed by long-poll from the controller."""
    key = (controller_name, namespace, endpoint)
    with _lock:
        router = _routers.get(key)
        if router is None:
            router = EndpointRouter(endpoint, LongPollSource(controller_name, namespace),
                                    controller_name, namespace)
            _routers[key] = router
    ensure_reporter()
    return Handle(router)


def all_routers() -> list[EndpointRouter]:
    with _lock:
        return list(_routers.values())


def drop_routers(controller_name: str, namespace: str) -> None:
    with _lock:
        for key in [k for k in _routers if k[:2] == (controller_name, namespace)]:
            _routers.pop(key).close()


def end_session(session_id: str) -> None:
    for router in all_routers():
        router.forget_session(session_id)


__all__ = ["EndpointRouter", "Handle", "HandleOptions", "LongPollSource", "QuorumError", "RequestInfo",
           "Response", "Router", "StaticSource", "all_routers", "drop_routers", "end_session",
           "get_handle"]
