"""gRPC ingress: a proxy actor that serves the user's gRPC services and routes every RPC to
an endpoint, as the HTTP proxy routes requests.

- ``proxy.py``: ``GRPCProxyActor`` (grpcio's asyncio server in the actor's event loop), the
  checks in order (API key, rate limit, requests in flight, endpoint and method), one handle
  call per RPC; ``grpc.health.v1`` and server reflection are served beside the user's services.
- ``servicer.py``: the user's ``add_<Service>Servicer_to_server`` functions, read for their
  methods' kinds and (de)serializers; every method is then served by the proxy.
- ``directory.py``: which endpoint serves an RPC (pure): the ``endpoint`` metadata key, else
  the one endpoint whose traffic backends define the method.
- ``status.py``: errors to gRPC status codes (pure).
- ``start.py``: one proxy on this node (``HeadOnly``) or on every node (``EveryNode``).

grpcio is an optional dependency (``pip install 'serveplane[grpc]'``): nothing here imports
it at module level, so ``import serveplane`` works without it.
"""

from __future__ import annotations

from serveplane.exceptions import InvalidConfigError

GRPC_MODULES = ("grpc", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection")


def require_grpc() -> None:
    """Raise ``InvalidConfigError`` saying what to install when grpcio is missing."""
    import importlib

    missing = []
    for name in GRPC_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.split(".")[0])
    if missing:
        raise InvalidConfigError(
            f"grpc_options needs grpcio, grpcio-health-checking and grpcio-reflection (missing: "
            f"{', '.join(missing)}); install them with: pip install 'serveplane[grpc]'")
