"""What a caller sees when a request fails: serveplane's types, or the user's own.

Ray hands a replica's exception to the caller wrapped (``RayTaskError``, its message led
by terminal colours, the pid, the IP and the actor id). A caller must instead get:

- serveplane's own errors (a replica's refusal, a deadline the replica enforced, a call
  cancelled under a request that was not) as serveplane's types, with a message that names
  the endpoint, the backend and what happened;
- the user's exception with its own type (``isinstance`` works) and its own message first.

Ray's wrapper stays reachable as ``__cause__`` (and in the logs), never in the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray.exceptions import RayTaskError, TaskCancelledError

from serveplane.exceptions import RequestCancelledError, ServeplaneError

if TYPE_CHECKING:
    from serveplane.router.request import RoutedRequest


def for_caller(error: BaseException, request: RoutedRequest) -> BaseException:
    """The exception the caller of ``request`` gets for ``error`` (an application outcome)."""
    if not isinstance(error, RayTaskError):
        if isinstance(error, TaskCancelledError):
            return _cancelled(request, error)
        return error
    cause = getattr(error, "cause", None)
    if not isinstance(cause, BaseException) or isinstance(cause, RayTaskError):
        return error  # nothing better to show (a cause that could not be rebuilt)
    if isinstance(cause, TaskCancelledError):
        return _cancelled(request, error)
    if not isinstance(cause, Exception):
        return error
    if isinstance(cause, ServeplaneError) and request.endpoint not in str(cause):
        cause = _named(cause, request)
    if cause.__cause__ is None:
        cause.__cause__ = error  # Ray's detail (the remote traceback) for logs and debuggers
    return cause


def _cancelled(request: RoutedRequest, error: BaseException) -> RequestCancelledError:
    backend = f" (backend {request.backend!r})" if request.backend else ""
    result = RequestCancelledError(
        f"request {request.request_id} to endpoint {request.endpoint!r}{backend} was cancelled on its "
        "replica")
    result.__cause__ = error
    return result


def _named(cause: ServeplaneError, request: RoutedRequest) -> BaseException:
    backend = f", backend {request.backend!r}" if request.backend else ""
    try:  # what happened first, then where
        named = type(cause)(f"{cause} (endpoint {request.endpoint!r}{backend})")
    except Exception:  # noqa: BLE001 - a type whose constructor takes other arguments
        return cause
    return named
