"""A hand-written fake of ``ReplicaActorWrapper`` for unit tests and the scale simulation."""

from __future__ import annotations

from typing import Any

from serveplane.backend_state.replica import HealthStatus, ProbeStatus
from serveplane.records import replica_actor_name


class FakeReplicaActorWrapper:
    """Controls: ``set_ready()``, ``set_failed(msg)``, ``set_dead()``, ``set_unhealthy()``,
    ``set_reconfigured()``, ``set_drained()``; flags record what the controller asked."""

    registry: dict[str, FakeReplicaActorWrapper] = {}
    existing_actors: set[str] = set()  # names that "exist" for recover()

    def __init__(self, backend: str, replica_tag: str, namespace: str = "test",
                 auto_ready: bool = False) -> None:
        self.backend = backend
        self.replica_tag = replica_tag
        self.actor_name = replica_actor_name(backend, replica_tag)
        self.actor_handle: Any = object()
        self.version: str | None = None
        self.user_config_version: str | None = None
        self.node_id: str | None = "node-0"
        self.spec: Any = None
        self.started = False
        self.recovered = False
        self.killed = False
        self.stop_requested = False
        self.reconfigure_requests: list[Any] = []
        self._ready = ProbeStatus.SUCCEEDED if auto_ready else ProbeStatus.PENDING
        self._ready_error: str | None = None
        self._reconfigured = ProbeStatus.PENDING
        self._health = HealthStatus.HEALTHY
        self._drained = False
        self.auto_ready = auto_ready
        FakeReplicaActorWrapper.registry[self.actor_name] = self

    # controls
    def set_ready(self) -> None:
        self._ready = ProbeStatus.SUCCEEDED

    def set_failed(self, message: str = "constructor raised") -> None:
        self._ready, self._ready_error = ProbeStatus.FAILED, message

    def set_dead(self) -> None:
        self._health = HealthStatus.DEAD
        FakeReplicaActorWrapper.existing_actors.discard(self.actor_name)

    def set_unhealthy(self) -> None:
        self._health = HealthStatus.UNHEALTHY

    def set_reconfigured(self) -> None:
        self._reconfigured = ProbeStatus.SUCCEEDED

    def set_drained(self) -> None:
        self._drained = True

    # wrapper protocol
    def set_health_options(self, period_s: float, timeout_s: float, threshold: int) -> None:
        pass

    def start(self, spec: Any) -> None:
        self.spec = spec
        self.version = spec.version
        self.user_config_version = spec.user_config_version
        self.started = True
        FakeReplicaActorWrapper.existing_actors.add(self.actor_name)

    def recover(self) -> bool:
        self.recovered = True
        return self.actor_name in FakeReplicaActorWrapper.existing_actors

    def check_ready(self) -> tuple[ProbeStatus, str | None]:
        return self._ready, self._ready_error

    def reconfigure(self, user_config: Any, user_config_version: str) -> None:
        self.reconfigure_requests.append(user_config)
        self.user_config_version = user_config_version
        self._reconfigured = ProbeStatus.SUCCEEDED if self.auto_ready else ProbeStatus.PENDING

    def check_reconfigured(self) -> tuple[ProbeStatus, str | None]:
        return self._reconfigured, None

    def check_health(self, now: float) -> HealthStatus:
        return self._health

    def probe_now(self) -> None:
        self.probed = True

    def begin_stop(self, graceful_timeout_s: float, now: float) -> None:
        self.stop_requested = True
        self._stop_deadline = now + graceful_timeout_s

    def check_stopped(self, now: float) -> bool:
        if self._drained or self.auto_ready or now >= self._stop_deadline:
            self.kill()
            return True
        return False

    def kill(self) -> None:
        self.killed = True
        FakeReplicaActorWrapper.existing_actors.discard(self.actor_name)
