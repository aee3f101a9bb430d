"""The replica actors that exist, by name: what the orphan sweep lists and kills.

A seam like the replica wrapper: Ray here, the simulated world in tests/sim.
"""

from __future__ import annotations

from typing import Protocol

import ray

from serveplane.records import REPLICA_NAME_PREFIX


class ActorDirectory(Protocol):
    """The replica actors that exist, by name (blocking calls: run through ``run_ray``)."""

    def replica_names(self) -> list[str]: ...
    def kill(self, name: str) -> None: ...


class RayActorDirectory:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def replica_names(self) -> list[str]:
        return [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                if e.get("namespace") == self.namespace and e.get("name", "").startswith(REPLICA_NAME_PREFIX)]

    def kill(self, name: str) -> None:
        try:
            ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
        except ValueError:
            pass  # gone already
