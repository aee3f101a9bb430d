"""Start the gRPC proxies: one on this node (``HeadOnly``) or one per alive node
(``EveryNode``), named ``serveplane_proxy:grpc:<node id>`` so that read-your-writes waits for
them and ``Client.shutdown`` stops them, as it does the HTTP proxies."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from serveplane.config import GRPCOptions

PROXY_NAME_PREFIX = "serveplane_proxy:grpc:"
READY_TIMEOUT_S = 60.0


def grpc_proxy_name(node_id: str) -> str:
    return f"{PROXY_NAME_PREFIX}{node_id}"


def start_grpc_proxies(options: GRPCOptions, namespace: str, detached: bool) -> tuple[list[str], list[Any]]:
    """The proxies' ``host:port`` addresses and their actor handles (keep the handles: a
    non-detached actor dies with its owner's last reference). A proxy that cannot start (a
    servicer function that does not import, a port in use) is killed and its error raised."""
    from serveplane.grpc.proxy import GRPCProxyActor

    if options.location == "EveryNode":
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    else:
        nodes = [ray.get_runtime_context().get_node_id()]
    proxies: list[Any] = []
    for node_id in nodes:
        proxies.append(ray.remote(GRPCProxyActor).options(
            name=grpc_proxy_name(node_id), namespace=namespace, get_if_exists=True,
            lifetime="detached" if detached else None, max_restarts=-1, max_concurrency=10_000,
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(options.model_dump(), namespace))
    try:
        addresses = ray.get([p.ready.remote() for p in proxies], timeout=READY_TIMEOUT_S)
    except ray.exceptions.RayTaskError as exc:
        for proxy in proxies:
            ray.kill(proxy, no_restart=True)
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, BaseException) else exc) from None
    return addresses, proxies

