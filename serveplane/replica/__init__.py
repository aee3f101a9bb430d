"""The replica actor that wraps user code."""

from serveplane.replica.actor import ReplicaActor

__all__ = ["ReplicaActor"]
