"""A hand-written fake of ``ReplicaActorWrapper`` for unit tests, the simulator and the
scale benchmark. It keeps the real wrapper's contract: observations never act, a health
check answers only after one was sent, a kill is needed to make an actor disappear."""

from __future__ import annotations

import math
from typing import Any

from serveplane.backend_state.replica import HealthStatus, ProbeStatus
from serveplane.records import replica_actor_name


class FakeReplicaActorWrapper:
    """Controls: ``set_ready()``, ``set_failed(msg)``, ``set_dead()``, ``set_unhealthy()``,
    ``set_reconfigured()``, ``set_drained()``; flags record what the controller asked.

    ``auto_ready`` replicas become ready, reconfigured and drained by themselves.
    ``start_error`` (class-level, or per instance) makes ``start`` raise, as Ray does for
    actor options it refuses.
    """

    registry: dict[str, FakeReplicaActorWrapper] = {}
    existing_actors: set[str] = set()  # names that "exist" for recover()
    start_error: BaseException | None = None

    def __init__(self, backend: str, replica_tag: str, namespace: str = "test",
                 auto_ready: bool = False) -> None:
        self.backend = backend
        self.replica_tag = replica_tag
        self.actor_name = replica_actor_name(backend, replica_tag)
        self.actor_handle: Any = object()
        self.version: str | None = None
        self.config_version: str | None = None
        self.node_id: str | None = "node-0"
        self.spec: Any = None
        self.started = False
        self.recovered = False
        self.killed = False
        self.stop_requested = False
        self.reconfigure_requests: list[Any] = []
        self.health_checks_sent = 0
        self._ready = ProbeStatus.SUCCEEDED if auto_ready else ProbeStatus.PENDING
        self._ready_error: str | None = None
        self._reconfigured = ProbeStatus.PENDING
        self._health = HealthStatus.HEALTHY
        self._health_answer: HealthStatus | None = None  # the answer to the check in flight
        self._health_period_s = 10.0
        self._next_health_at = 0.0
        self._drained = False
        self._stop_deadline = -math.inf
        self.auto_ready = auto_ready
        FakeReplicaActorWrapper.registry[self.actor_name] = self

    # controls
    def set_ready(self) -> None:
        self._ready = ProbeStatus.SUCCEEDED

    def set_failed(self, message: str = "constructor raised") -> None:
        self._ready, self._ready_error = ProbeStatus.FAILED, message

    def set_dead(self) -> None:
        self._health = HealthStatus.DEAD
        if self._ready is ProbeStatus.PENDING:
            self._ready, self._ready_error = ProbeStatus.FAILED, "ActorDiedError: the actor died"
        FakeReplicaActorWrapper.existing_actors.discard(self.actor_name)

    def set_unhealthy(self) -> None:
        self._health = HealthStatus.UNHEALTHY

    def set_reconfigured(self) -> None:
        self._reconfigured = ProbeStatus.SUCCEEDED

    def set_drained(self) -> None:
        self._drained = True

    # wrapper protocol: observations
    def set_health_options(self, period_s: float, timeout_s: float, threshold: int) -> None:
        self._health_period_s = period_s

    def recover(self) -> bool:
        self.recovered = True
        return self.actor_name in FakeReplicaActorWrapper.existing_actors

    def check_ready(self) -> tuple[ProbeStatus, str | None]:
        return self._ready, self._ready_error

    def check_reconfigured(self) -> tuple[ProbeStatus, str | None]:
        return self._reconfigured, None

    def next_health_at(self) -> float:
        return self._next_health_at if self._health_answer is None else -math.inf

    def health_due(self, now: float) -> bool:
        return self._health_answer is None and now >= self._next_health_at

    def check_health(self, now: float) -> HealthStatus:
        answer, self._health_answer = self._health_answer, None
        return answer or HealthStatus.HEALTHY

    def stop_finished(self, now: float) -> bool:
        return self._drained or self.auto_ready or now >= self._stop_deadline

    # wrapper protocol: actions
    def start(self, spec: Any) -> None:
        error = self.__dict__.get("start_error", FakeReplicaActorWrapper.start_error)
        if error is not None:
            raise error
        self.spec = spec
        self.version = spec.version
        self.config_version = spec.config_version
        self.started = True
        FakeReplicaActorWrapper.existing_actors.add(self.actor_name)

    def reconfigure(self, config: dict[str, Any], config_version: str) -> None:
        self.reconfigure_requests.append(config.get("user_config"))
        self.config_version = config_version
        self._reconfigured = ProbeStatus.SUCCEEDED if self.auto_ready else ProbeStatus.PENDING

    def send_health_check(self, now: float) -> None:
        self.health_checks_sent += 1
        self._next_health_at = now + self._health_period_s
        self._health_answer = self._health

    def probe_now(self) -> None:
        self._next_health_at = -math.inf

    def begin_stop(self, graceful_timeout_s: float, now: float) -> None:
        self.stop_requested = True
        self._stop_deadline = now + graceful_timeout_s

    def kill(self) -> None:
        self.killed = True
        FakeReplicaActorWrapper.existing_actors.discard(self.actor_name)


class FakeActorDirectory:
    """The actor names ``FakeReplicaActorWrapper`` says exist, for the orphan sweep."""

    def __init__(self) -> None:
        self.killed: list[str] = []

    def replica_names(self) -> list[str]:
        return sorted(FakeReplicaActorWrapper.existing_actors)

    def kill(self, name: str) -> None:
        self.killed.append(name)
        FakeReplicaActorWrapper.existing_actors.discard(name)
