"""serveplane: a checkpointed control plane for serving models on Ray.

Public API::

    import serveplane
    from serveplane import BackendConfig

    client = serveplane.start(kv_store="ray://serveplane")   # or serveplane.connect()
    client.create_backend("model:v1", Model, config=BackendConfig(num_replicas=2))
    client.create_endpoint("model", backend="model:v1", route="/model")
    client.set_traffic("model", {"model:v1": 0.9, "model:v2": 0.1})
    client.shadow_traffic("model", "model:v3", 0.2)
    handle = client.get_handle("model")
    handle.remote(x).result(timeout=10)

    class Model:
        @serveplane.http_method               # callable over HTTP with X-SERVE-CALL-METHOD
        def predict(self, request): ...

``serveplane.start(grpc_options={"port": 9000, "servicer_functions": [...]})`` also serves
gRPC (``GRPCOptions``; ``pip install 'serveplane[grpc]'``).

Every change call returns once every HTTP proxy and this process's routers serve it (read
your writes). Ray Serve 1.x code runs with its import line changed:
``from serveplane.compat import serve`` (see ``serveplane.compat``).

Everything not exported here is internal.
"""

from typing import Any

from serveplane.context import RequestContext, get_request_context
from serveplane.exposure import http_method
from serveplane.replica.batching import accept_batch, batch
from serveplane.config import AutoscalingConfig, BackendConfig, GRPCOptions, HTTPOptions
from serveplane.exceptions import (
    BackPressureError,
    BatchSizeMismatchError,
    ControllerUnavailableError,
    CorruptCheckpointError,
    DuplicateError,
    InUseError,
    InvalidConfigError,
    InvalidInputError,
    KVStoreUnavailableError,
    MethodNotExposedError,
    NotFoundError,
    ReplicaDiedError,
    ReplicaError,
    ReplicaStartupError,
    RequestCancelledError,
    RequestTimeoutError,
    StreamingMethodError,
    ServeplaneError,
    StaleEpochError,
    StateAuthenticationError,
)

__all__ = [
    "AutoscalingConfig", "BackPressureError", "BackendConfig", "BatchSizeMismatchError", "Client",
    "ControllerUnavailableError", "CorruptCheckpointError", "DuplicateError", "GRPCOptions", "HTTPOptions",
    "InUseError", "InvalidConfigError", "InvalidInputError", "KVStoreUnavailableError",
    "MethodNotExposedError", "NotFoundError", "ReplicaDiedError", "ReplicaError", "ReplicaStartupError",
    "RequestCancelledError", "RequestContext", "RequestTimeoutError", "ServeplaneError",
    "StateAuthenticationError", "StaleEpochError", "StreamingMethodError",
    "accept_batch", "batch", "connect", "get_request_context", "http_method", "start",
]


def __getattr__(name: str) -> Any:
    # start/connect/Client pull in the controller and Ray; import them on first use so that
    # `import serveplane.config` (and unit tests) stay light.
    if name in ("start", "connect"):
        from serveplane import api

        return getattr(api, name)
    if name == "Client":
        from serveplane.client import Client

        return Client
    raise AttributeError(f"module 'serveplane' has no attribute {name!r}")
