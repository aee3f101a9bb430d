"""One error hierarchy, grouped by what the caller can do about it.

- bad input: ``ValueError`` subclasses, raised before anything changes;
- not found: ``KeyError``-like lookups of backends, endpoints, sessions;
- back-pressure: retry later;
- replica failure: the request did not complete on a replica;
- controller/store unavailable, stale epoch, corrupt checkpoint: control-plane faults.

Messages name the bad value and the rule, lowercase, e.g.
"traffic weights for endpoint 'ep' sum to 0.9; they must sum to 1".
"""

from __future__ import annotations


class ServeplaneError(Exception):
    """Base of every error serveplane raises on purpose."""


# -- bad input ---------------------------------------------------------------
class InvalidInputError(ServeplaneError, ValueError):
    """The call was refused before anything changed."""


class DuplicateError(InvalidInputError):
    """A backend tag, endpoint name or route is already taken by something different."""


class InUseError(InvalidInputError):
    """The object is still referenced (e.g. a backend used by an endpoint's traffic)."""


class InvalidConfigError(InvalidInputError):
    """A config value breaks a rule (weights, proportions, actor options, YAML)."""


# -- not found ---------------------------------------------------------------
class NotFoundError(ServeplaneError, KeyError):
    """A named backend, endpoint, route or session does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class BackendNotFoundError(NotFoundError, InvalidInputError):
    pass


class EndpointNotFoundError(NotFoundError, InvalidInputError):
    pass


class GoalNotFoundError(NotFoundError, InvalidInputError):
    """A goal id this controller never issued (or forgot long after it finished)."""


# -- back-pressure -----------------------------------------------------------
class MethodNotExposedError(NotFoundError, InvalidInputError):
    """An HTTP request named a method its backend does not expose over HTTP (HTTP 404)."""


class BackPressureError(ServeplaneError):
    """Every replica is full and the router's queue is at its limit: retry later."""


# -- replica failures --------------------------------------------------------
class ReplicaError(ServeplaneError):
    """A request did not complete on a replica."""


class ReplicaDiedError(ReplicaError):
    """The replica running the request died and the request was not retried."""


class RequestTimeoutError(ServeplaneError, TimeoutError):
    """A request or a goal did not finish in time (a request's deadline passed)."""


class NoReplicasError(ReplicaError, RequestTimeoutError):
    """No replica had a free slot before the request's deadline (it never ran)."""


class RequestCancelledError(ServeplaneError):
    """The request was cancelled (``Response.cancel()``, ``ResponseStream.cancel()``, a
    cancelled caller, a client that went away) before its answer was read."""


class ReplicaFullError(ServeplaneError):
    """A replica refused a request without running it: it is at max_concurrent_queries
    across all routers, or draining. Routers treat it as "full, try another", never as a
    failure or a death."""


class StreamingMethodError(InvalidInputError):
    """A generator method was called without ``stream=True`` (or a stream was asked of a
    method the caller may not stream)."""


class BatchSizeMismatchError(ReplicaError):
    """A batch method returned a list whose length differs from its input."""


# -- control plane -----------------------------------------------------------
class ControllerUnavailableError(ServeplaneError):
    """The controller could not be reached."""


class KVStoreUnavailableError(ServeplaneError):
    """A key-value store operation failed because the store is unreachable.

    The store URL is shown with its credentials redacted, in the message and in ``store``;
    a password that the cause's text repeats is redacted too."""

    def __init__(self, store: str, operation: str, cause: BaseException | str):
        from serveplane.redact import redact_text, redact_url

        self.store = redact_url(store)
        self.operation = operation
        self.cause = redact_text(str(cause), store)
        super().__init__(f"key-value store {self.store} is unavailable: {operation} failed ({self.cause})")

    def __reduce__(self):
        return (type(self), (self.store, self.operation, str(self.cause)))


class StaleEpochError(ServeplaneError):
    """A writer holding an old epoch tried to write: a newer controller owns the state."""


class CorruptCheckpointError(ServeplaneError):
    """A checkpoint or blob is damaged, fails authentication or has an unknown schema
    version; nothing was loaded from it."""


class StateAuthenticationError(CorruptCheckpointError):
    """A record, blob or undo log fails authentication under the state key (changed by
    something that does not hold the key, written under another key, or written by the
    previous, unauthenticated format): it is refused, never unpickled."""


class ReplicaStartupError(ReplicaError):
    """Replicas of a backend version failed to start repeatedly (e.g. the constructor raised)."""
