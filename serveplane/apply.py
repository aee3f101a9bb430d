"""Declarative apply: create, update and delete until the cluster matches a config.

Order keeps every intermediate state valid: create backends, update backends, create or
update endpoints, delete endpoints, delete backends (a backend is deleted only once no
endpoint uses it).
"""

from __future__ import annotations

import hashlib
import inspect
import contextlib
import json
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import cloudpickle

from serveplane.client import Client
from serveplane.deploy_config import BackendSpec, DeployConfig, EndpointSpec, import_attr


# apply order: a change never leaves the cluster in a state the controller would refuse
RANK = {("+", "backend"): 0, ("~", "backend"): 1, ("-", "route"): 2, ("+", "endpoint"): 3,
        ("~", "endpoint"): 4, ("-", "endpoint"): 5, ("-", "backend"): 6}


@dataclass
class Change:
    kind: str          # "+", "~", "-"
    what: str          # "backend model:v1" ...
    detail: str
    run: Callable[[], Any]
    rank: int = 0

    def __str__(self) -> str:
        return f"{self.kind} {self.what}{': ' + self.detail if self.detail else ''}"


def _change(kind: str, group: str, name: str, detail: str, run: Callable[[], Any]) -> Change:
    noun = "endpoint" if group == "route" else group
    return Change(kind, f"{noun} {name}", detail, run, RANK[(kind, group)])


def code_version(spec: BackendSpec, obj: Any) -> str:
    """A stable fingerprint of the code: import path and the module's source text."""
    try:
        source = inspect.getsource(inspect.getmodule(obj))  # type: ignore[arg-type]
    except (OSError, TypeError):
        source = repr(obj)
    return hashlib.sha256(f"{spec.import_path}\n{source}".encode()).hexdigest()[:16]


def plan(client: Client, config: DeployConfig, base_dir: Path) -> list[Change]:
    current_backends = client._call("get_backend_definitions")
    current_endpoints = client.list_endpoints()
    changes: list[Change] = []
    wanted_backends = {b.name: b for b in config.backends}
    wanted_endpoints = {e.name: e for e in config.endpoints}

    for spec in config.backends:
        obj = import_attr(spec.import_path, base_dir)
        version = code_version(spec, obj)
        config_fields = spec.config.model_dump(mode="json")
        if spec.name not in current_backends:
            changes.append(_change("+", "backend", spec.name, f"{spec.import_path} x{spec.config.num_replicas}",
                                  _create_backend(client, spec, obj, version)))
            continue
        cur = current_backends[spec.name]
        init_hash = hashlib.sha256(cloudpickle.dumps((tuple(spec.init_args), dict(spec.init_kwargs)))).hexdigest()
        code_changed = cur["code_version"] != version or cur["init_hash"] != init_hash \
            or cur["actor_options"] != spec.ray_actor_options
        config_diff = {k: v for k, v in config_fields.items() if cur["config"].get(k) != v}
        if code_changed:
            changes.append(_change("~", "backend", spec.name, "code, init args or actor options changed "
                                  "(rolling update)", _update_backend(client, spec, obj, version)))
        elif config_diff:
            changes.append(_change("~", "backend", spec.name, "config " + json.dumps(config_diff, sort_keys=True),
                                  partial(client.update_backend_config, spec.name, config_diff)))

    for ep in config.endpoints:
        traffic = ep.traffic or {ep.initial_backend(): 1.0}
        cur = current_endpoints.get(ep.name)
        if cur is not None and (cur["route"] != ep.route or
                                [m.upper() for m in cur["methods"]] != [m.upper() for m in ep.methods]):
            changes.append(_change("-", "route", ep.name, "route or methods changed (re-created)",
                                  partial(client.delete_endpoint, ep.name)))
            cur = None
        if cur is None:
            changes.append(_change("+", "endpoint", ep.name, f"{ep.route or '(no route)'} -> "
                                  + json.dumps(traffic, sort_keys=True), _create_endpoint(client, ep, traffic)))
            if ep.rollout is not None:
                changes.append(_rollout_change(client, ep))
            continue
        rollout = client.get_rollout(ep.name) if cur.get("rollout") else None
        if ep.rollout is not None and _rollout_wanted(ep, rollout, cur):
            changes.append(_rollout_change(client, ep))
        if rollout is not None and rollout["state"] in ("shadowing", "running", "paused") \
                or ep.rollout is not None:
            pass  # the rollout owns the traffic: the file's traffic is its source
        elif cur["traffic"] != traffic:
            changes.append(_change("~", "endpoint", ep.name, "traffic " + json.dumps(traffic, sort_keys=True),
                                  partial(client.set_traffic, ep.name, traffic)))
        for backend in sorted(set(cur["shadows"]) | set(ep.shadows)):
            want = ep.shadows.get(backend, 0.0)
            if cur["shadows"].get(backend, 0.0) != want:
                changes.append(_change("~", "endpoint", ep.name, f"shadow {backend}={want:g}",
                                      partial(client.shadow_traffic, ep.name, backend, want)))
        if cur["router"] != ep.router:
            changes.append(_change("~", "endpoint", ep.name, f"router {ep.router}",
                                  partial(client.set_router, ep.name, ep.router)))
        if (cur["batch_size"], cur["batch_timeout_s"]) != (ep.batch_size, ep.batch_timeout_s):
            changes.append(_change("~", "endpoint", ep.name, f"batching {ep.batch_size}/{ep.batch_timeout_s:g}s",
                                  partial(client.set_batching, ep.name, ep.batch_size, ep.batch_timeout_s)))

    for name in sorted(set(current_endpoints) - set(wanted_endpoints)):
        changes.append(_change("-", "endpoint", name, "", partial(client.delete_endpoint, name)))
    for name in sorted(set(current_backends) - set(wanted_backends)):
        changes.append(_change("-", "backend", name, "", partial(client.delete_backend, name)))
    return changes


def _create_backend(client: Client, spec: BackendSpec, obj: Any, version: str) -> Callable[[], Any]:
    return lambda: client.create_backend(spec.name, obj, *spec.init_args,
                                         ray_actor_options=spec.ray_actor_options or None,
                                         config=spec.config, code_version=version, **spec.init_kwargs)


def _update_backend(client: Client, spec: BackendSpec, obj: Any, version: str) -> Callable[[], Any]:
    def run() -> Any:
        client.update_backend(spec.name, obj, *spec.init_args, ray_actor_options=spec.ray_actor_options,
                              code_version=version, init_kwargs=spec.init_kwargs)
        return client.update_backend_config(spec.name, spec.config.model_dump(mode="json"))
    return run


def _create_endpoint(client: Client, spec: EndpointSpec, traffic: dict[str, float]) -> Callable[[], Any]:
    def run() -> None:
        client.create_endpoint(spec.name, backend=spec.initial_backend(), route=spec.route,
                               methods=spec.methods, router=spec.router, batch_size=spec.batch_size,
                               batch_timeout_s=spec.batch_timeout_s)
        if traffic != {spec.initial_backend(): 1.0}:
            client.set_traffic(spec.name, traffic)
        for backend, proportion in spec.shadows.items():
            client.shadow_traffic(spec.name, backend, proportion)
    return run


def _rollout_wanted(ep: EndpointSpec, rollout: dict[str, Any] | None, cur: dict[str, Any]) -> bool:
    """Start the file's rollout unless one of that canary is under way, already done, or
    ended in a roll-back (re-applying the same file must not retry a canary that failed)."""
    assert ep.rollout is not None
    if cur["traffic"] == {ep.rollout.backend: 1.0}:
        return False
    if rollout is None or rollout["backend"] != ep.rollout.backend:
        return rollout is None or rollout["state"] not in ("shadowing", "running", "paused")
    return False


def _rollout_change(client: Client, ep: EndpointSpec) -> Change:
    spec = ep.rollout
    assert spec is not None
    detail = (f"rollout {spec.backend} steps {spec.steps} every {spec.interval_s:g}s"
              + (f" after {spec.shadow_s:g}s of shadowing" if spec.shadow_s else "")
              + (f" guards {json.dumps(spec.guards, sort_keys=True)}" if spec.guards else ""))
    return _change("~", "endpoint", ep.name, detail, partial(
        client.start_rollout, ep.name, spec.backend, spec.steps, spec.interval_s, spec.guards or None,
        spec.shadow_s))


def apply(client: Client, config: DeployConfig, base_dir: Path, dry_run: bool = False,
          echo: Callable[[str], None] = print,
          watch: Callable[[str], ContextManager[Any]] | None = None) -> list[Change]:
    """``watch(backend)`` is open while a backend change waits for its replicas (the CLI
    shows their start-up with it, ``serveplane/progress.py``)."""
    changes = plan(client, config, base_dir)
    changes.sort(key=lambda c: c.rank)
    if not changes:
        echo("no changes")
    for change in changes:
        echo(str(change))
        if dry_run:
            continue
        waits = watch is not None and change.what.startswith("backend ") and change.kind in "+~"
        with watch(change.what.removeprefix("backend ")) if watch is not None and waits \
                else contextlib.nullcontext():
            change.run()
    return changes
