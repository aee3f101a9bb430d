from __future__ import annotations

from typing import Any

import ray

from serveplane.records import RequestMetadata


def replica_actors(client, backend: str) -> dict[str, Any]:
    """The named replica actors of a backend, from the controller's status."""
    names = {e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
             if e["namespace"] == client._namespace and e["name"].startswith(f"serveplane:{backend}#")}
    return {n: ray.get_actor(n, namespace=client._namespace) for n in names}


def call_replica(actor, *args, method: str = "__call__", timeout: float = 30) -> Any:
    meta = RequestMetadata(request_id="t", endpoint="direct", method_name=method)
    return ray.get(actor.handle_request.remote(meta, *args), timeout=timeout)


def running_count(client, backend: str) -> int:
    status = client.get_status()["backends"].get(backend)
    return 0 if status is None else status["replicas"].get("RUNNING", 0) + status["replicas"].get("UPDATING", 0)
