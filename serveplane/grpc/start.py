"""Start the gRPC proxies: one on this node (``HeadOnly``) or one per alive node
(``EveryNode``), named ``serveplane_proxy:grpc:<node id>`` so that read-your-writes waits for
them and ``Client.shutdown`` stops them, as it does the HTTP proxies."""

from __future__ import annotations

from typing import Any

import ray

from serveplane.config import GRPCOptions
from serveplane.proxy_actors import place_proxies

PROXY_NAME_PREFIX = "serveplane_proxy:grpc:"
READY_TIMEOUT_S = 60.0


def grpc_proxy_name(node_id: str) -> str:
    return f"{PROXY_NAME_PREFIX}{node_id}"


def start_grpc_proxies(options: GRPCOptions, namespace: str, detached: bool) -> tuple[list[str], list[Any]]:
    """The proxies' ``host:port`` addresses and their actor handles (keep the handles: a
    non-detached actor dies with its owner's last reference). A proxy that cannot start (a
    servicer function that does not import, a port in use) is killed and its error raised."""
    from serveplane.grpc.proxy import GRPCProxyActor

    proxies = place_proxies(GRPCProxyActor, grpc_proxy_name, options.location, options.model_dump(),
                            namespace, detached)
    try:
        addresses = ray.get([p.ready.remote() for p in proxies], timeout=READY_TIMEOUT_S)
    except ray.exceptions.RayTaskError as exc:
        for proxy in proxies:
            ray.kill(proxy, no_restart=True)
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, BaseException) else exc) from None
    return addresses, proxies

