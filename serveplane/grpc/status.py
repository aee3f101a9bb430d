"""What the gRPC proxy answers when a call does not succeed (pure: no grpc import).

| status | when |
|---|---|
| UNAUTHENTICATED | API keys are configured and the metadata has no valid ``authorization: Bearer <key>`` |
| RESOURCE_EXHAUSTED + ``retry-after`` | the key's rate limit, ``max_concurrent_requests`` in flight, back-pressure (``BackPressureError``, ``ReplicaFullError``) |
| NOT_FOUND | no such endpoint, or no backend of it defines the method (also private and control names) |
| FAILED_PRECONDITION | no ``endpoint`` metadata and several endpoints define the method |
| DEADLINE_EXCEEDED | the call's deadline (or ``request_timeout_s``) passed, waiting for a replica (``NoReplicasError``) or running |
| UNAVAILABLE + ``retry-after`` | the replica running the call died and the call was not retried (``ReplicaDiedError``) |
| UNIMPLEMENTED | a unary RPC whose backend method is a generator (``StreamingMethodError``), or an RPC that streams requests |
| CANCELLED | the request was cancelled on the serving side (``RequestCancelledError``) |
| INTERNAL + ``error-id`` | the backend raised (or anything unexpected): the details say only the error id |

An INTERNAL answer never carries the exception's text unless ``debug_errors``; the proxy logs
it under the error id.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from serveplane import exceptions as errors

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Outcome:
    """A gRPC status to answer with: the code's name (``grpc.StatusCode[code]``), details and
    trailing metadata; ``error_id`` is set for INTERNAL (the caller logs the cause under it)."""

    code: str
    details: str
    metadata: tuple[tuple[str, str], ...] = ()
    error_id: str | None = None


def retry_later(details: str, retry_after_s: int = RETRY_AFTER_S, code: str = "RESOURCE_EXHAUSTED") -> Outcome:
    return Outcome(code, details, (("retry-after", str(retry_after_s)),))


def _cancelled_types() -> tuple[type[BaseException], ...]:
    cancelled = getattr(errors, "RequestCancelledError", None)
    return (asyncio.CancelledError,) + ((cancelled,) if isinstance(cancelled, type) else ())  # issue 14


def cause_of(exc: BaseException) -> BaseException:
    """A replica's error arrives wrapped by Ray (``RayTaskError``, with ``.cause``)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _from_replica(exc: BaseException) -> bool:
    wrapper = exc.__cause__
    return wrapper is not None and type(wrapper).__name__.startswith("RayTaskError")


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def outcome_of(exc: BaseException, endpoint: str, debug_errors: bool = False) -> Outcome:
    """The status a call to ``endpoint`` that raised ``exc`` answers with."""
    cause = cause_of(exc)
    # raised in this process, not by user code on a replica: a replica's error arrives
    # wrapped (``.cause``), or as the user's own exception with Ray's wrapper as __cause__
    local = cause is exc and not _from_replica(exc)
    if isinstance(cause, _cancelled_types()[1:]) or (local and isinstance(cause, asyncio.CancelledError)):
        return Outcome("CANCELLED", f"the request to endpoint {endpoint!r} was cancelled")
    # NoReplicasError is a RequestTimeoutError: no replica had a slot before the deadline
    if isinstance(cause, errors.RequestTimeoutError) or (local and isinstance(cause, asyncio.TimeoutError)):
        return Outcome("DEADLINE_EXCEEDED", f"the request to endpoint {endpoint!r} did not finish "
                                            "before its deadline")
    if isinstance(cause, errors.BackPressureError):
        return retry_later(f"endpoint {endpoint!r} is at capacity; retry after {RETRY_AFTER_S}s")
    if isinstance(cause, errors.ReplicaFullError):
        return retry_later(f"every replica of endpoint {endpoint!r} is full; retry after {RETRY_AFTER_S}s")
    if isinstance(cause, errors.StreamingMethodError):
        return Outcome("UNIMPLEMENTED", "the backend's method for this RPC is a generator; declare the "
                                        "RPC server-streaming (returns (stream ...)) to call it")
    if isinstance(cause, errors.ReplicaDiedError):
        return retry_later(f"the replica serving the request to endpoint {endpoint!r} died; retry "
                           f"after {RETRY_AFTER_S}s", code="UNAVAILABLE")
    if isinstance(cause, errors.NotFoundError):  # endpoint deleted, method not exposed
        return Outcome("NOT_FOUND", _short(cause))
    return internal_error(cause, debug_errors)


def internal_error(cause: BaseException, debug_errors: bool = False) -> Outcome:
    error_id = uuid.uuid4().hex[:12]
    details = f"internal error; the server logged it as error {error_id}"
    if debug_errors:
        details += f" ({type(cause).__name__}: {_short(cause)})"
    return Outcome("INTERNAL", details, (("error-id", error_id),), error_id)
