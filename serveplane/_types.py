"""Id types shared across packages."""

from __future__ import annotations

from typing import NewType

BackendTag = NewType("BackendTag", str)
EndpointName = NewType("EndpointName", str)
ReplicaTag = NewType("ReplicaTag", str)
SessionId = NewType("SessionId", str)
GoalId = NewType("GoalId", str)
