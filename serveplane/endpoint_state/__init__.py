"""Endpoints, routes, methods, traffic and shadow policies, and their validation."""

from serveplane.endpoint_state.state import EndpointRecord, EndpointState

__all__ = ["EndpointRecord", "EndpointState"]
