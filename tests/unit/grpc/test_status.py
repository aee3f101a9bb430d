"""Errors to gRPC status codes (serveplane/grpc/status.py): no Ray, no server."""

from __future__ import annotations

import asyncio

import pytest

from serveplane import exceptions as errors
from serveplane.grpc.status import internal_error, outcome_of


class Wrapped(Exception):
    """Stands in for Ray's RayTaskError: a replica's exception arrives as ``.cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"ray::ReplicaActor.handle_request() ... {cause!r}")
        self.cause = cause


@pytest.mark.parametrize("exc, code, retry_after", [
    (errors.EndpointNotFoundError("endpoint 'e' was deleted"), "NOT_FOUND", None),
    (Wrapped(errors.MethodNotExposedError("method 'x' is not exposed")), "NOT_FOUND", None),
    (errors.BackPressureError("queue full"), "RESOURCE_EXHAUSTED", "1"),
    (errors.RequestTimeoutError("too late"), "DEADLINE_EXCEEDED", None),
    (asyncio.TimeoutError(), "DEADLINE_EXCEEDED", None),
    (errors.NoReplicasError("no slot before the deadline"), "DEADLINE_EXCEEDED", None),
    (errors.ReplicaFullError("full"), "RESOURCE_EXHAUSTED", "1"),
    (Wrapped(errors.StreamingMethodError("method 'Count' is a generator")), "UNIMPLEMENTED", None),
    (errors.ReplicaDiedError("died"), "UNAVAILABLE", "1"),
    (asyncio.CancelledError(), "CANCELLED", None),
    (Wrapped(ValueError("secret")), "INTERNAL", None),
    (Wrapped(TimeoutError("the user's own timeout")), "INTERNAL", None),   # not the call's deadline
    (Wrapped(asyncio.CancelledError()), "INTERNAL", None),
    (RuntimeError("unexpected"), "INTERNAL", None),
], ids=["endpoint-deleted", "not-exposed", "back-pressure", "request-timeout", "local-timeout",
        "no-replicas", "replica-full", "generator-called-unary", "replica-died", "cancelled", "user-error", "user-timeout", "user-cancelled",
        "unexpected"])
def test_status_of_each_error(exc, code, retry_after):
    outcome = outcome_of(exc, "ep")
    assert outcome.code == code
    assert dict(outcome.metadata).get("retry-after") == retry_after
    if code == "INTERNAL":
        assert outcome.error_id and dict(outcome.metadata)["error-id"] == outcome.error_id
        assert outcome.details == f"internal error; the server logged it as error {outcome.error_id}"
    else:
        assert outcome.error_id is None and "secret" not in outcome.details


def test_request_cancelled_error_when_issue_14_defines_it():
    cancelled = getattr(errors, "RequestCancelledError", None)
    if cancelled is None:
        pytest.skip("serveplane.exceptions.RequestCancelledError does not exist yet (issue 14)")
    assert outcome_of(cancelled("cancelled"), "ep").code == "CANCELLED"
    assert outcome_of(Wrapped(cancelled("cancelled")), "ep").code == "CANCELLED"


def test_debug_errors_adds_the_cause_and_ids_differ():
    first, second = internal_error(ValueError("boom\nlast line")), internal_error(ValueError("boom"))
    assert first.error_id != second.error_id and "boom" not in first.details
    debug = outcome_of(Wrapped(ValueError("boom\nlast line")), "ep", debug_errors=True)
    assert debug.code == "INTERNAL" and debug.details.endswith("(ValueError: last line)")
