"""``RoutedRequest``: everything a router knows about one request, with one owner.

A request's state (``RequestState``), its backend and replica, its slot, its queue
reservation, its attempts, its batch, its deadline and its stream progress live here and
change only through the methods below, each a checked transition (``state.ALLOWED``);
they are called by the request's router under its lock. The caller's side (awaiting,
``result()``, ``cancel()``, iteration) is ``Response`` / ``ResponseStream``, which only
reads this record.

Invariants:
- a request holds at most one slot, and gives it back exactly once (``give_back_slot``);
- it holds at most one queue reservation, and gives it back exactly once (``unreserve``);
- it becomes final exactly once (``end``); its outcome is counted once, by its router;
- a stream that delivered a chunk is never sent again (``retry`` refuses it).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from serveplane import tracing
from serveplane.records import ReplicaInfo, RequestMetadata
from serveplane.router.state import ALLOWED, RequestState, check

if TYPE_CHECKING:
    from serveplane.clock import Clock


# A request without a deadline waits this long at most for a slot (then NoReplicasError).
QUEUE_TIMEOUT_S = 60.0


class Outcome(str, enum.Enum):
    """How a request ended, as the backend's figures count it (``stats.Outcomes``)."""

    ANSWERED = "answered"          # user code answered (a value or its own error)
    REPLICA_FAILED = "replica_failed"
    TIMED_OUT = "timed_out"        # its deadline passed while it ran
    CANCELLED = "cancelled"        # its caller cancelled it (or dropped a stream)
    EXPIRED = "expired"            # it waited for a slot past its deadline; it never ran
    REFUSED = "refused"            # back-pressure: the queue was full
    FAILED = "failed"              # failed before a replica ran it (an argument's error)


class RoutedRequest:
    __slots__ = ("request_id", "endpoint", "method_name", "args", "kwargs", "deps", "session_id",
                 "shard_key", "http", "http_method", "http_headers", "timeout_s", "stream", "trace",
                 "started", "wall_deadline", "deadline", "queue_deadline", "state", "backend", "replica",
                 "ref", "attempts", "queued_under", "batch_index", "batch", "waiting", "failure",
                 "previous_ref", "previous_replica", "producers", "holds_slot", "watched", "chunks",
                 "shadows", "outcome", "batched", "settled", "abandoned")

    def __init__(self, request_id: str, endpoint: str, clock: Clock, args: tuple, kwargs: dict,
                 deps: tuple[RoutedRequest, ...], method_name: str, session_id: str | None,
                 shard_key: str | None, timeout_s: float | None, http: bool = False,
                 http_method: str | None = None, http_headers: dict[str, str] | None = None,
                 wall_deadline: float | None = None, stream: bool = False) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.args = args
        self.kwargs = kwargs
        self.deps = deps
        self.method_name = method_name
        self.session_id = session_id
        self.shard_key = shard_key
        self.http = http  # from the HTTP proxy: only methods exposed over HTTP may run
        self.http_method = http_method    # for classic-convention backends (RequestMetadata)
        self.http_headers = http_headers
        self.timeout_s = timeout_s
        self.stream = stream
        self.trace = tracing.capture() if tracing.ENABLED else None  # where the call was made
        self.started = now = clock.monotonic()  # the latency a caller sees is measured from here
        # the deadline: monotonic here, wall clock on the wire; the earlier of this request's
        # timeout_s and the one it inherits (a handle call made while running a request)
        if timeout_s is not None:
            own = clock.time() + timeout_s
            wall_deadline = own if wall_deadline is None else min(own, wall_deadline)
        self.wall_deadline = wall_deadline
        self.deadline = None if wall_deadline is None else now + (wall_deadline - clock.time())
        self.queue_deadline = self.deadline if self.deadline is not None else now + QUEUE_TIMEOUT_S
        self.state = RequestState.NEW
        self.backend: str | None = None
        self.replica: ReplicaInfo | None = None
        self.ref: Any = None             # the current attempt's ref; None while (re-)routing
        self.attempts = 0
        self.queued_under: str | None = None
        self.batch_index: int | None = None  # position in a router-side batch
        self.batch: Any = None               # that batch's call (``BatchCall``)
        self.batched = False                 # it was gathered into a router-side batch
        self.waiting: Any = None         # Task / concurrent Future while the request waits
        self.failure: BaseException | None = None  # the router's verdict, when it failed
        self.previous_ref: Any = None    # the last failed attempt's ref, while re-routing
        self.previous_replica: ReplicaInfo | None = None  # ... and the replica it ran on
        self.producers: tuple[ReplicaInfo, ...] = ()  # replicas that made its arguments
        self.holds_slot = False
        self.watched = False             # a completion callback frees its slot
        self.chunks = 0                  # chunks a stream delivered
        self.shadows: list[Any] = []     # ``ShadowOutcome`` s waiting for the primary's answer
        self.outcome: Outcome | None = None
        self.abandoned = False           # its Response was dropped unread
        self.settled: dict[int, Any] = {}  # id(Response argument) -> its final answer, if awaited

    @property
    def queue_timeout_s(self) -> float:
        return self.queue_deadline - self.started

    # -- transitions (the router calls them under its lock) --------------------------------------
    def _move(self, state: RequestState) -> None:
        if state not in ALLOWED[self.state]:
            check(self.state, state)  # raises IllegalTransition, naming both
        self.state = state

    def queue(self, backend: str | None) -> None:
        """It waits for a slot; ``backend`` is the queue count it reserved (None: none)."""
        if backend is not None:
            if self.queued_under is not None:
                raise AssertionError(f"{self!r} reserved a queue place twice")
            self.queued_under = backend
        if self.state is not RequestState.QUEUED:
            self._move(RequestState.QUEUED)

    def unreserve(self) -> str | None:
        """Give back its queue reservation, once; the backend it was counted under."""
        backend, self.queued_under = self.queued_under, None
        return backend

    def assign(self, replica: ReplicaInfo) -> None:
        """It holds a slot of ``replica`` (claimed in the slot table by the router)."""
        self._move(RequestState.ASSIGNED)
        self.replica = replica
        self.backend = replica.backend
        self.holds_slot = True
        self.watched = False

    def give_back_slot(self) -> ReplicaInfo | None:
        """Its slot, to be freed in the slot table; ``None`` if it holds none (at most once)."""
        if not self.holds_slot:
            return None
        self.holds_slot = False
        return self.replica

    def sent(self, ref: Any) -> None:
        self._move(RequestState.RUNNING)
        self.ref = ref
        self.previous_ref = None  # a failed attempt's ref may hold its error (and a cycle)

    def first_chunk(self) -> None:
        """A stream delivered a chunk (the first moves it to STREAMING)."""
        self.chunks += 1
        if self.state is RequestState.RUNNING:
            self._move(RequestState.STREAMING)

    def retry(self, failed_ref: Any, waiting: Any) -> None:
        """Its attempt failed and it goes again (``waiting`` is where awaiters wait)."""
        if self.chunks:
            raise AssertionError(f"{self!r} delivered {self.chunks} chunks; a stream is never sent again")
        if self.holds_slot:
            raise AssertionError(f"{self!r} is retried while it still holds a slot")
        self._move(RequestState.QUEUED)
        self.waiting = waiting  # before ref=None: awaiters never see neither
        self.previous_ref = None if self.stream else failed_ref  # a stream is never an argument
        self.previous_replica = self.replica
        self.ref = None
        self.replica = None
        self.batch_index = None  # retried on its own
        self.batch = None

    def end(self, state: RequestState, outcome: Outcome | None, failure: BaseException | None = None) -> bool:
        """It is final (``state``); False if it already was. ``outcome`` is what its
        backend's figures count (``None``: it never reached a backend)."""
        if self.state.final:
            return False
        self._move(state)
        self.outcome = outcome
        if failure is not None:
            self.failure = failure
        if state is not RequestState.DONE:
            self.shadows = []  # nothing to compare a failed or cancelled answer with
        return True

    # -- what travels ---------------------------------------------------------------------------
    def metadata(self, is_shadow: bool = False) -> RequestMetadata:
        """The one ``RequestMetadata`` builder: every call of this request carries its
        deadline, session and shard key (a shadow too)."""
        return RequestMetadata(self.request_id, self.endpoint, self.method_name, self.session_id,
                               self.shard_key, is_shadow, self.http, self.http_method, self.http_headers,
                               self.wall_deadline)

    def __repr__(self) -> str:
        where = self.replica.actor_name if self.replica is not None else (
            "failed" if self.failure is not None else "waiting")
        return f"<RoutedRequest {self.endpoint}.{self.method_name} {self.request_id} -> {where} " \
               f"({self.state.value})>"
