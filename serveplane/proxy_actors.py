"""Placing ingress proxy actors (HTTP and gRPC): one on this node (``HeadOnly``) or one
per alive node (``EveryNode``), pinned there, restarted by Ray when they die."""

from __future__ import annotations

from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def place_proxies(actor_class: type, name_of: Callable[[str], str], location: str,
                  options: dict[str, Any], namespace: str, detached: bool) -> list[Any]:
    """Start (or find, by name) one ``actor_class(options, namespace)`` per node of
    ``location``; returns their handles (keep them: a non-detached actor dies with its
    owner's last reference)."""
    if location == "EveryNode":
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    else:
        nodes = [ray.get_runtime_context().get_node_id()]
    return [ray.remote(actor_class).options(
        name=name_of(node_id), namespace=namespace, get_if_exists=True,
        lifetime="detached" if detached else None, max_restarts=-1, max_concurrency=10_000,
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(options, namespace) for node_id in nodes]
