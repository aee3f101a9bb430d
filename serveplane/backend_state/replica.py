"""Replica lifecycle and the container that groups replicas by state.

Only ``ReplicaStateContainer`` methods move a replica between states, and every move
records when it happened, so that timeouts (``startup_timeout_s``) are decided from the
container alone.
"""

from __future__ import annotations

import enum
from typing import Any, Iterator, Protocol


class ReplicaState(str, enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    UPDATING = "UPDATING"      # reconfigure() in flight; still serves
    RECOVERING = "RECOVERING"  # found again after a controller restart; serves until proven dead
    STOPPING = "STOPPING"


class ProbeStatus(str, enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class HealthStatus(str, enum.Enum):
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"  # failure threshold reached or check timed out
    DEAD = "DEAD"


class ReplicaWrapper(Protocol):
    """Every Ray call about one replica.

    Two kinds of method: *observations* (``check_*``, ``health_due``, ``stop_finished``) read
    local state and the futures of earlier calls, never call Ray and never block; *actions*
    (``start``, ``reconfigure``, ``send_health_check``, ``begin_stop``, ``kill``) call Ray and
    may raise. The reconcile step only observes; the control loop runs the actions it returns.
    """

    replica_tag: str
    actor_name: str
    version: str | None
    config_version: str | None
    node_id: str | None
    actor_handle: Any

    def set_health_options(self, period_s: float, timeout_s: float, threshold: int) -> None: ...
    def recover(self) -> bool: ...
    # observations
    def check_ready(self) -> tuple[ProbeStatus, str | None]: ...
    def check_reconfigured(self) -> tuple[ProbeStatus, str | None]: ...
    def health_due(self, now: float) -> bool: ...
    def next_health_at(self) -> float: ...
    def check_health(self, now: float) -> HealthStatus: ...
    def stop_finished(self, now: float) -> bool: ...
    # actions
    def start(self, spec: Any) -> None: ...
    def reconfigure(self, config: dict[str, Any], config_version: str) -> None: ...
    def send_health_check(self, now: float) -> None: ...
    def probe_now(self) -> None: ...
    def begin_stop(self, graceful_timeout_s: float, now: float) -> None: ...
    def kill(self) -> None: ...


class Replica:
    """One replica as the controller tracks it."""

    def __init__(self, wrapper: ReplicaWrapper, state: ReplicaState, since: float = 0.0) -> None:
        self.wrapper = wrapper
        self.state = state
        self.since = since          # when it entered ``state``
        self.grace_s = 0.0          # STOPPING: how long it may drain
        self.stop_sent = False      # STOPPING: the stop (drain) action was decided
        self.kill_sent = False      # STOPPING: the kill action was decided (it may still fail)

    @property
    def tag(self) -> str:
        return self.wrapper.replica_tag

    @property
    def version(self) -> str | None:
        return self.wrapper.version

    def __repr__(self) -> str:
        return f"<Replica {self.wrapper.actor_name} {self.state.value} v={self.version}>"


class ReplicaStateContainer:
    def __init__(self) -> None:
        self._by_state: dict[ReplicaState, list[Replica]] = {s: [] for s in ReplicaState}

    def add(self, replica: Replica) -> None:
        self._by_state[replica.state].append(replica)

    def move(self, replica: Replica, to: ReplicaState, now: float) -> None:
        self._by_state[replica.state].remove(replica)
        replica.state = to
        replica.since = now
        self._by_state[to].append(replica)

    def remove(self, replica: Replica) -> None:
        if replica in self._by_state[replica.state]:
            self._by_state[replica.state].remove(replica)

    def get(self, *states: ReplicaState) -> list[Replica]:
        chosen = states or tuple(ReplicaState)
        return [r for s in chosen for r in self._by_state[s]]

    def count(self, *states: ReplicaState) -> int:
        return sum(len(self._by_state[s]) for s in (states or tuple(ReplicaState)))

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.get())

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_state.values())

    def __contains__(self, replica: object) -> bool:
        return isinstance(replica, Replica) and replica in self._by_state[replica.state]

    def summary(self) -> dict[str, int]:
        return {s.value: len(v) for s, v in self._by_state.items() if v}
