"""Target and current state of every backend; the replica state machine; the Ray wrapper."""

from serveplane.backend_state.backend import Action, BackendState, BackendUpdate
from serveplane.backend_state.manager import BackendStateManager
from serveplane.backend_state.record import BackendRecord
from serveplane.backend_state.replica import (
    HealthStatus,
    ProbeStatus,
    Replica,
    ReplicaState,
    ReplicaStateContainer,
)
from serveplane.backend_state.wrapper import ReplicaActorWrapper, ReplicaSpec

__all__ = [
    "Action", "BackendRecord", "BackendState", "BackendStateManager", "BackendUpdate",
    "HealthStatus", "ProbeStatus", "Replica", "ReplicaActorWrapper", "ReplicaSpec",
    "ReplicaState", "ReplicaStateContainer",
]
