"""Can a backend's replicas be placed? Checked before anything changes, as Ray Serve 1.x did.

- options Ray itself refuses (``resources={"GPU": 1}``, a negative count, a wrong type) are
  refused with Ray's reason;
- a replica that no node of the cluster could ever hold (a resource no node has, more GPUs
  than the largest node) is refused with the resource named: it would wait forever;
- a replica some node could hold, but not now (the cluster is full), waits: a node joining
  or another replica leaving lets it start. ``get_status()`` says so (``waiting_note``).

Plain functions over resource dicts; only ``cluster_nodes``/``cluster_available`` call Ray.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from serveplane.exceptions import InvalidConfigError


class PlacementError(InvalidConfigError):
    """A backend's replicas cannot be placed: Ray refuses their options, or no node fits one."""


class UnplaceableError(PlacementError):
    """No node of the cluster can hold one replica of the backend."""


def replica_demand(actor_options: Mapping[str, Any]) -> dict[str, float]:
    """The resources one replica asks Ray for (the controller's defaults included: one CPU,
    none when it asks for GPUs)."""
    options = dict(actor_options)
    demand: dict[str, float] = {
        "CPU": float(options.get("num_cpus", 0 if options.get("num_gpus") else 1) or 0),
        "GPU": float(options.get("num_gpus") or 0),
        "memory": float(options.get("memory") or 0),
    }
    for name, amount in dict(options.get("resources") or {}).items():
        demand[str(name)] = float(amount)
    if options.get("accelerator_type"):
        demand[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {name: amount for name, amount in demand.items() if amount > 0}


def check_ray_accepts(backend: str, actor_options: Mapping[str, Any]) -> None:
    """Ray's own validation of actor options, without starting anything."""
    import ray

    try:
        ray.remote(_Probe).options(**dict(actor_options))
    except (ValueError, TypeError) as exc:
        raise PlacementError(
            f"cannot scale backend {backend!r}: Ray refuses its ray_actor_options "
            f"{dict(actor_options)!r}: {exc}") from None


def _fmt(amount: float) -> str:
    return f"{amount:g}"


def _describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={_fmt(amount)}" for name, amount in sorted(resources.items())) or "nothing"


def infeasible_reason(backend: str, demand: Mapping[str, float],
                      node_totals: Sequence[Mapping[str, float]]) -> str | None:
    """Why no node could ever hold one replica, or ``None`` when some node can."""
    if any(all(node.get(name, 0.0) >= amount for name, amount in demand.items()) for node in node_totals):
        return None
    missing = []
    for name, amount in sorted(demand.items()):
        largest = max((node.get(name, 0.0) for node in node_totals), default=0.0)
        if largest <= 0:
            missing.append(f"{name}={_fmt(amount)}, but no node has {name}")
        elif largest < amount:
            missing.append(f"{name}={_fmt(amount)}, but the largest node has {name}={_fmt(largest)}")
    what = ("; ".join(missing) if missing else
            f"{_describe(demand)}, and no single node has all of it")
    return (f"cannot scale backend {backend!r}: one replica needs {what} ({len(node_totals)} "
            "node(s) alive); add a node that has it, or lower ray_actor_options")


def waiting_note(demand: Mapping[str, float], starting: int, available: Mapping[str, float],
                 total: Mapping[str, float]) -> str | None:
    """What ``get_status()`` says of replicas still starting when the cluster lacks room
    for another one right now; ``None`` when there is room (they are just starting)."""
    short = {name: amount for name, amount in demand.items() if available.get(name, 0.0) < amount}
    if not short:
        return None
    free = ", ".join(f"{name}={_fmt(available.get(name, 0.0))} of {_fmt(total.get(name, 0.0))}"
                     for name in sorted(short))
    return (f"{starting} replica(s) may be waiting for resources: each needs {_describe(demand)}; "
            f"free now: {free}; they start when a node joins or other work frees resources")


def check_placeable(backend: str, actor_options: Mapping[str, Any]) -> None:
    """Refuse, before anything changes, options Ray refuses and replicas no node can hold."""
    check_ray_accepts(backend, actor_options)
    reason = infeasible_reason(backend, replica_demand(actor_options), cluster_nodes())
    if reason is not None:
        raise UnplaceableError(reason)


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node (a blocking GCS call)."""
    import ray

    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def cluster_available() -> tuple[dict[str, float], dict[str, float]]:
    """Free and total resources of the cluster (blocking GCS calls)."""
    import ray

    return dict(ray.available_resources()), dict(ray.cluster_resources())


class _Probe:
    """A class for ``ray.remote(...).options(...)`` to validate options against; never started."""
