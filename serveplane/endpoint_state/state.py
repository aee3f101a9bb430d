"""Target state of every endpoint.

Invariants:
- every validation runs before any field changes: a refused call leaves the state as it was;
- every backend named in an endpoint's traffic or shadows is known to the caller-supplied
  ``backend_exists`` at the time of the change (the controller refuses to delete a backend
  that ``backends_in_use`` still reports).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

import cloudpickle
from pydantic import BaseModel, ConfigDict, Field

from serveplane.config import ROUTER_NAMES, validate_shadow_proportion, validate_traffic
from serveplane.exceptions import (
    BackendNotFoundError,
    DuplicateError,
    EndpointNotFoundError,
    InvalidConfigError,
)
from serveplane.records import EndpointInfo
from serveplane.rollout import Rollout

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_ENDPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-/]+$")


class EndpointRecord(BaseModel):
    """Persisted record of one endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    route: str | None = None
    methods: tuple[str, ...] = ("GET",)
    traffic: dict[str, float]
    shadows: dict[str, float] = Field(default_factory=dict)
    router: str = "round_robin"
    router_blob_hash: str | None = None
    batch_size: int | None = None
    batch_timeout_s: float = 0.0
    rollout: Rollout | None = None  # the current or last rollout (one write with the traffic)

    def public(self) -> dict[str, Any]:
        return {"route": self.route, "methods": list(self.methods), "traffic": dict(self.traffic),
                "shadows": dict(self.shadows), "router": self.router,
                "batch_size": self.batch_size, "batch_timeout_s": self.batch_timeout_s,
                "rollout": self.rollout.state.value if self.rollout is not None else None}

    def info(self, router_blob: bytes | None) -> EndpointInfo:
        return EndpointInfo(name=self.name, route=self.route, methods=self.methods,
                            traffic=dict(self.traffic), shadows=dict(self.shadows),
                            router=self.router, router_blob=router_blob,
                            batch_size=self.batch_size, batch_timeout_s=self.batch_timeout_s)


def validate_name(kind: str, name: Any) -> str:
    """Backend tags: letters, digits and ``_ . : -`` (a tag names replica actors). Endpoint
    names may also hold ``/``, as Ray Serve 1.x allowed."""
    endpoint = kind == "endpoint"
    pattern = _ENDPOINT_NAME_RE if endpoint else _NAME_RE
    if not isinstance(name, str) or not name or not pattern.match(name):
        allowed = "_ . : - /" if endpoint else "_ . : -"
        hint = ""
        if not endpoint and isinstance(name, str) and "/" in name:
            hint = (f"; Ray Serve 1.x allowed '/' in backend tags, serveplane does not (tags name "
                    f"replica actors): rename it, e.g. {name.replace('/', '-')!r}, in create_backend "
                    "and in every traffic and shadow that names it")
        raise InvalidConfigError(
            f"{kind} name {name!r} is invalid; use letters, digits and any of {allowed} "
            f"(non-empty){hint}")
    return name


def validate_route(route: Any) -> str | None:
    if route is None:
        return None
    if not isinstance(route, str) or not route.startswith("/"):
        raise InvalidConfigError(f"route {route!r} is invalid; a route must start with '/'")
    if len(route) > 1 and route.endswith("/"):
        route = route.rstrip("/")
    return route


def validate_methods(methods: Iterable[str] | str | None) -> tuple[str, ...]:
    if methods is None:
        return ("GET",)
    if isinstance(methods, str):
        methods = [methods]
    out = []
    for m in methods:
        if not isinstance(m, str) or m.upper() not in HTTP_METHODS:
            raise InvalidConfigError(
                f"http method {m!r} is not supported; use any of {', '.join(HTTP_METHODS)}")
        if m.upper() not in out:
            out.append(m.upper())
    if not out:
        raise InvalidConfigError("methods is empty; give at least one http method")
    return tuple(out)


def validate_router(router: Any) -> tuple[str, bytes | None]:
    """A policy name, or a user subclass of ``serveplane.router.Router`` (pickled)."""
    if router is None:
        return "round_robin", None
    if isinstance(router, str):
        if router not in ROUTER_NAMES:
            raise InvalidConfigError(
                f"router {router!r} is unknown; use one of {', '.join(ROUTER_NAMES)} "
                "or a subclass of serveplane.Router")
        return router, None
    if isinstance(router, type) and callable(getattr(router, "choose", None)):
        return "custom", cloudpickle.dumps(router)
    raise InvalidConfigError(
        f"router {router!r} is invalid; give a policy name or a subclass of serveplane.Router "
        "with choose(replicas, request)")


def validate_batching(batch_size: Any, batch_timeout_s: Any) -> tuple[int | None, float]:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InvalidConfigError(f"batch_size is {batch_size!r}; it must be an integer >= 1 or None")
    if isinstance(batch_timeout_s, bool) or not isinstance(batch_timeout_s, (int, float)) \
            or batch_timeout_s < 0:
        raise InvalidConfigError(f"batch_timeout_s is {batch_timeout_s!r}; it must be a number >= 0")
    return batch_size, float(batch_timeout_s)


class EndpointState:
    """All endpoints. Methods validate fully, then replace one frozen record."""

    def __init__(self, backend_exists: Callable[[str], bool]) -> None:
        self._backend_exists = backend_exists
        self._endpoints: dict[str, EndpointRecord] = {}
        self._by_route: dict[str, str] = {}  # route -> endpoint: uniqueness in O(1)

    # -- queries ---------------------------------------------------------------
    def get(self, name: str) -> EndpointRecord:
        try:
            return self._endpoints[name]
        except KeyError:
            raise EndpointNotFoundError(
                f"endpoint {name!r} does not exist; known endpoints: "
                f"{', '.join(sorted(self._endpoints)) or 'none'}") from None

    def exists(self, name: str) -> bool:
        return name in self._endpoints

    def names(self) -> list[str]:
        return sorted(self._endpoints)

    def records(self) -> dict[str, EndpointRecord]:
        return dict(self._endpoints)

    def routes(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {r.route: (r.name, r.methods) for r in self._endpoints.values() if r.route}

    def backends_in_use(self, backend: str) -> list[str]:
        return sorted(name for name, r in self._endpoints.items()
                      if backend in r.traffic or backend in r.shadows)

    def _require_backends(self, endpoint: str, backends: Iterable[str]) -> None:
        for b in backends:
            if not self._backend_exists(b):
                raise BackendNotFoundError(
                    f"backend {b!r} used by endpoint {endpoint!r} does not exist; "
                    "create it with create_backend first")

    # -- changes (each returns the new record, or None for a no-op) ------------
    def validate_create(self, name: str, backend: str, route: Any, methods: Any, router: Any,
                        batch_size: Any, batch_timeout_s: Any,
                        router_blob_hash: str | None) -> EndpointRecord | None:
        validate_name("endpoint", name)
        if not isinstance(backend, str):
            raise InvalidConfigError(f"backend is {backend!r}; give the tag of an existing backend")
        route = validate_route(route)
        methods_t = validate_methods(methods)
        router_name, _ = validate_router(router)
        batch_size, batch_timeout_s = validate_batching(batch_size, batch_timeout_s)
        self._require_backends(name, [backend])
        record = EndpointRecord(name=name, route=route, methods=methods_t, traffic={backend: 1.0},
                                router=router_name, router_blob_hash=router_blob_hash,
                                batch_size=batch_size, batch_timeout_s=batch_timeout_s)
        existing = self._endpoints.get(name)
        if existing is not None:
            same = (existing.route == route and existing.methods == methods_t
                    and existing.router == router_name and existing.batch_size == batch_size
                    and existing.batch_timeout_s == batch_timeout_s
                    and existing.router_blob_hash == router_blob_hash
                    and backend in existing.traffic)
            if same:
                return None  # identical re-creation is idempotent
            raise DuplicateError(
                f"endpoint {name!r} already exists with a different definition; delete it first "
                "or use set_traffic / set_router to change it")
        if route is not None and route in self._by_route:
            raise DuplicateError(
                f"route {route!r} is already used by endpoint {self._by_route[route]!r}; "
                "routes must be unique")
        return record

    def validate_traffic(self, name: str, traffic: Mapping[str, float]) -> EndpointRecord:
        record = self.get(name)
        weights = validate_traffic(name, traffic)
        self._require_backends(name, weights)
        return record.model_copy(update={"traffic": weights})

    def validate_shadow(self, name: str, backend: str, proportion: float) -> EndpointRecord:
        record = self.get(name)
        proportion = validate_shadow_proportion(name, backend, proportion)
        shadows = dict(record.shadows)
        if proportion == 0.0:
            shadows.pop(backend, None)
        else:
            self._require_backends(name, [backend])
            shadows[backend] = proportion
        return record.model_copy(update={"shadows": shadows})

    def validate_router_change(self, name: str, router: Any,
                               router_blob_hash: str | None) -> EndpointRecord:
        record = self.get(name)
        router_name, _ = validate_router(router)
        return record.model_copy(update={"router": router_name, "router_blob_hash": router_blob_hash})

    def validate_batching_change(self, name: str, batch_size: Any,
                                 batch_timeout_s: Any) -> EndpointRecord:
        record = self.get(name)
        size, timeout = validate_batching(batch_size, batch_timeout_s)
        return record.model_copy(update={"batch_size": size, "batch_timeout_s": timeout})

    def put(self, record: EndpointRecord) -> None:
        self.remove(record.name)
        self._endpoints[record.name] = record
        if record.route:
            self._by_route[record.route] = record.name

    def remove(self, name: str) -> bool:
        record = self._endpoints.pop(name, None)
        if record is not None and record.route:
            self._by_route.pop(record.route, None)
        return record is not None

    # -- persistence -----------------------------------------------------------
    def to_checkpoint(self) -> dict[str, Any]:
        return {name: r.model_dump(mode="json") for name, r in self._endpoints.items()}

    def load_checkpoint(self, data: Mapping[str, Any]) -> None:
        self._endpoints, self._by_route = {}, {}
        for r in data.values():
            self.put(EndpointRecord.model_validate(r))
