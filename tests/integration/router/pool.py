"""``ReplicaPool``: real replica actors, published to routers the way the controller would.

Starts ``ReplicaActor`` s directly and pushes ``replicas:``, ``backend_config:`` and
``endpoint:`` values to a ``StaticSource`` (and, after ``serve_long_poll()``, to a small
named long-poll host actor, so handles built with ``get_handle`` work in other processes).
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import cloudpickle
import ray

from serveplane.config import BackendConfig
from serveplane.long_poll import LongPollHost
from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, keys, replica_actor_name
from serveplane.replica.actor import ReplicaActor
from serveplane.router import Handle, StaticSource

NAMESPACE = "serveplane-test"
READY_TIMEOUT_S = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def init_ray() -> None:
    """The suite's shared Ray (same arguments as ``tests/conftest.py``)."""
    if ray.is_initialized():
        return
    try:
        import tests.conftest as top
    except ImportError:  # pragma: no cover - run outside the suite
        top = None
    ray.init(address="local", num_cpus=getattr(top, "RAY_NUM_CPUS", 8),
             num_gpus=getattr(top, "RAY_NUM_GPUS", 2), include_dashboard=False,
             namespace=NAMESPACE, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(getattr(top, "ROOT", ROOT))}})


@ray.remote(num_cpus=0)
class LongPollHostActor:
    """The controller's long-poll surface alone: enough for ``LongPollSource``."""

    def __init__(self) -> None:
        self.host = LongPollHost(timeout_s=10.0)

    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, str | None]) -> Any:
        return await self.host.listen_for_change(keys_to_snapshot_ids)

    def notify_changed(self, key: str, value: Any) -> None:
        self.host.notify_changed(key, value)

    def record_handle_metrics(self, *args: Any) -> None:
        pass

    def report_replica_failure(self, backend: str, actor_name: str) -> bool:
        return False


class ReplicaPool:
    def __init__(self) -> None:
        self.source = StaticSource()
        self.prefix = uuid.uuid4().hex[:6]
        self.controller_name: str | None = None
        self._host: Any = None
        self._code: dict[str, tuple[bytes, bytes, BackendConfig]] = {}
        self._published: dict[str, list[ReplicaInfo]] = {}
        self._actors: list[Any] = []
        self._endpoints: list[str] = []
        self._count = 0
        self._lock = threading.RLock()  # the chaos test publishes from several threads

    # -- publishing ---------------------------------------------------------------------
    def publish(self, key: str, value: Any) -> None:
        self.source.set(key, value)
        if self._host is not None:
            ray.get(self._host.notify_changed.remote(key, value), timeout=30)

    def serve_long_poll(self) -> str:
        """Start a named long-poll host mirroring every key; returns its name."""
        self.controller_name = f"fake-controller-{self.prefix}"
        self._host = LongPollHostActor.options(name=self.controller_name, namespace=NAMESPACE).remote()
        self._actors.append(self._host)
        for key, value in self._all_values().items():
            ray.get(self._host.notify_changed.remote(key, value), timeout=30)
        return self.controller_name

    def _all_values(self) -> dict[str, Any]:
        return {key: self.source.get(key) for key in self._keys}

    @property
    def _keys(self) -> list[str]:
        return [k for b in self._code for k in (keys.replicas(b), keys.backend_config(b))] + self._endpoints

    # -- backends and replicas --------------------------------------------------------------
    def backend(self, backend: str, code: Any, *init_args: Any, replicas: int = 1,
                **config: Any) -> list[ReplicaInfo]:
        """Start ``replicas`` replicas of ``code`` and publish them with their config."""
        cfg = BackendConfig(**config)
        self._code[backend] = (cloudpickle.dumps(code), cloudpickle.dumps((init_args, {})), cfg)
        self._published[backend] = []
        started = self._start(backend, replicas)
        self.publish(keys.backend_config(backend), BackendInfo(backend, cfg))
        self._published[backend].extend(started)
        self.publish(keys.replicas(backend), tuple(self._published[backend]))
        return started

    def add_replica(self, backend: str, publish: bool = True) -> ReplicaInfo:
        info = self._start(backend, 1)[0]
        if publish:
            with self._lock:
                self._published[backend] = self._published[backend] + [info]
                self.publish(keys.replicas(backend), tuple(self._published[backend]))
        return info

    def remove_replica(self, info: ReplicaInfo, replacement: ReplicaInfo | None = None) -> None:
        """Drop a replica from the published list, optionally adding its replacement in the
        same update (what the controller does once it notices a death)."""
        with self._lock:
            current = [r for r in self._published[info.backend] if r != info]
            if replacement is not None:
                current.append(replacement)
            self._published[info.backend] = current
            self.publish(keys.replicas(info.backend), tuple(current))

    def replicas(self, backend: str) -> list[ReplicaInfo]:
        return list(self._published[backend])

    def set_config(self, backend: str, **config: Any) -> None:
        code, init, _ = self._code[backend]
        cfg = BackendConfig(**config)
        self._code[backend] = (code, init, cfg)
        self.publish(keys.backend_config(backend), BackendInfo(backend, cfg))

    def _start(self, backend: str, count: int) -> list[ReplicaInfo]:
        code, init, cfg = self._code[backend]
        infos = []
        for _ in range(count):
            with self._lock:
                self._count += 1
                tag = f"{self.prefix}-{self._count}"
            name = replica_actor_name(backend, tag)
            actor = ray.remote(ReplicaActor).options(
                name=name, namespace=NAMESPACE, max_concurrency=1000, num_cpus=0,
                max_restarts=0).remote(backend, tag, code, init, cfg.model_dump(), "v1")
            self._actors.append(actor)
            infos.append(ReplicaInfo(backend, tag, name, actor, cfg.max_concurrent_queries))
        ray.get([i.actor_handle.ready.remote() for i in infos], timeout=READY_TIMEOUT_S)
        return infos

    @staticmethod
    def kill(info: ReplicaInfo) -> None:
        ray.kill(info.actor_handle, no_restart=True)

    # -- endpoints --------------------------------------------------------------------------
    def endpoint(self, name: str, traffic: dict[str, float] | str, **fields: Any) -> Handle:
        """Publish an endpoint and return a handle with a router of its own on the source."""
        if isinstance(traffic, str):
            traffic = {traffic: 1.0}
        key = keys.endpoint(name)
        if key not in self._endpoints:
            self._endpoints.append(key)
        self.publish(key, EndpointInfo(name=name, route=None, methods=("GET",), traffic=traffic, **fields))
        return Handle(name, source=self.source)

    def shutdown(self) -> None:
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors.clear()
