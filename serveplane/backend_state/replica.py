"""Replica lifecycle and the container that groups replicas by state.

Only ``ReplicaStateContainer`` methods move a replica between states.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable, Iterator, Protocol


class ReplicaState(str, enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    UPDATING = "UPDATING"      # reconfigure() in flight; still serves
    RECOVERING = "RECOVERING"  # found again after a controller restart, readiness pending
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
    """Every Ray call about one replica. Methods never block: they fire or poll."""

    replica_tag: str
    actor_name: str
    version: str | None
    user_config_version: str | None
    node_id: str | None
    actor_handle: Any

    def start(self, spec: Any) -> None: ...
    def recover(self) -> bool: ...
    def check_ready(self) -> tuple[ProbeStatus, str | None]: ...
    def reconfigure(self, user_config: Any, user_config_version: str) -> None: ...
    def check_reconfigured(self) -> tuple[ProbeStatus, str | None]: ...
    def check_health(self, now: float) -> HealthStatus: ...
    def begin_stop(self, graceful_timeout_s: float, now: float) -> None: ...
    def check_stopped(self, now: float) -> bool: ...
    def kill(self) -> None: ...


class Replica:
    """One replica as the controller tracks it."""

    def __init__(self, wrapper: ReplicaWrapper, state: ReplicaState) -> None:
        self.wrapper = wrapper
        self.state = state

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

    def move(self, replica: Replica, to: ReplicaState) -> None:
        self._by_state[replica.state].remove(replica)
        replica.state = to
        self._by_state[to].append(replica)

    def remove(self, replica: Replica) -> None:
        self._by_state[replica.state].remove(replica)

    def get(self, *states: ReplicaState) -> list[Replica]:
        chosen = states or tuple(ReplicaState)
        return [r for s in chosen for r in self._by_state[s]]

    def count(self, *states: ReplicaState, version: str | None = None,
              exclude_version: str | None = None) -> int:
        return sum(1 for r in self.get(*states)
                   if (version is None or r.version == version)
                   and (exclude_version is None or r.version != exclude_version))

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.get())

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_state.values())

    def summary(self) -> dict[str, int]:
        return {s.value: len(v) for s, v in self._by_state.items() if v}


def live_states() -> Iterable[ReplicaState]:
    return (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UPDATING,
            ReplicaState.RECOVERING)
