"""Records published by the controller and read on the data path.

These are the values of the long-poll keys (see ``keys``) and the metadata sent with
every request. They are frozen: a router swaps whole records, never edits one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serveplane.config import BackendConfig

CONTROLLER_NAME = "serveplane_controller"
DEFAULT_NAMESPACE = "serveplane"
REPLICA_NAME_PREFIX = "serveplane:"


class keys:
    """Long-poll keys. Fine-grained: a change publishes only its own key."""

    ROUTES = "routes"
    ENDPOINTS = "endpoints"   # sorted tuple of every endpoint's name (the gRPC proxy follows it)

    @staticmethod
    def endpoint(name: str) -> str:
        return f"endpoint:{name}"

    @staticmethod
    def replicas(backend: str) -> str:
        return f"replicas:{backend}"

    @staticmethod
    def backend_config(backend: str) -> str:
        return f"backend_config:{backend}"


def replica_actor_name(backend: str, replica_tag: str) -> str:
    return f"{REPLICA_NAME_PREFIX}{backend}#{replica_tag}"


@dataclass(frozen=True)
class ReplicaInfo:
    """One RUNNING replica as routers see it (value list of ``replicas:<backend>``)."""

    backend: str
    replica_tag: str
    actor_name: str
    actor_handle: Any
    max_concurrent_queries: int
    node_id: str | None = None

    def __repr__(self) -> str:
        return f"<ReplicaInfo {self.backend}#{self.replica_tag}>"

    def __hash__(self) -> int:
        return hash(self.actor_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplicaInfo) and other.actor_name == self.actor_name


@dataclass(frozen=True)
class EndpointInfo:
    """Value of ``endpoint:<name>``: everything a router needs to split traffic."""

    name: str
    route: str | None
    methods: tuple[str, ...]
    traffic: dict[str, float]
    shadows: dict[str, float] = field(default_factory=dict)
    router: str = "round_robin"
    router_blob: bytes | None = None  # cloudpickled user Router subclass when router == "custom"
    batch_size: int | None = None
    batch_timeout_s: float = 0.0


@dataclass(frozen=True)
class BackendInfo:
    """Value of ``backend_config:<backend>``: what routers need of a backend's config."""

    backend: str
    config: BackendConfig
    accepts_batches: bool = False
    # public methods the backend's code defines (None: recorded before this field existed);
    # the gRPC proxy routes an RPC with no endpoint metadata by them
    method_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RequestMetadata:
    """Sent with every request to a replica."""

    request_id: str
    endpoint: str
    method_name: str = "__call__"
    session_id: str | None = None
    shard_key: str | None = None
    is_shadow: bool = False
    http: bool = False
    # the request's method and headers for backends of the classic (1.x) convention, from
    # handle.options(http_method=..., http_headers=...); None: GET, no headers
    http_method: str | None = None
    http_headers: dict[str, str] | None = None
    # when the caller stops waiting: wall-clock seconds since the epoch (it crosses
    # processes and nodes), None for no deadline; the replica refuses to start past it
    deadline: float | None = None
    # W3C traceparent of the caller's span, when tracing is on
    trace: str | None = None
