"""Mutations: defects of the data path put back one at a time, to show the simulator
catches what it claims to (``python -m tests.sim.dataplane --mutation NAME``).

Each is a context manager that patches the real code for the length of a run.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from serveplane.router.batcher import BatchCall
from serveplane.router.ledger import Ledger
from serveplane.router.stats import Outcomes
from serveplane.router.view import RouterView


@contextlib.contextmanager
def _patched(owner: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def watch_streams() -> Any:
    """Issue 22 #1: every request in flight gets a completion callback once requests queue,
    streams too (Ray's generators have none)."""
    def unwatched(self: Ledger) -> list:
        todo = [r for r in self.running if not r.watched and r.ref is not None]
        for request in todo:
            request.watched = True
        return todo
    return _patched(Ledger, "unwatched", unwatched)


def blind_outcomes() -> Any:
    """Issue 22 #3: the figures see answers and replica failures only (not timeouts,
    cancels, expiries or refusals)."""
    original = Outcomes.ended

    def ended(self: Outcomes, backend: str, outcome: str, latency_s: float, ok: bool = True) -> None:
        if outcome in ("answered", "replica_failed"):
            original(self, backend, outcome, latency_s, ok)
    return _patched(Outcomes, "ended", ended)


def sessions_move_on_refusal() -> Any:
    """Issue 22 #4: a session whose replica is held back after a refusal (or full) goes
    to another replica instead of waiting for its own."""
    original = RouterView.pick

    def pick(self: RouterView, request: Any) -> Any:
        chosen = original(self, request)
        if chosen is None and request.session_id is not None:
            session, request.session_id = request.session_id, None
            try:
                chosen = original(self, request)
            finally:
                request.session_id = session
        return chosen
    return _patched(RouterView, "pick", pick)


def cancel_hits_batch() -> Any:
    """A cancelled batch-mate cancels the batch's one call (every request in it)."""
    return _patched(BatchCall, "all_final", lambda self: True)


MUTATIONS: dict[str, Callable[[], Any]] = {
    "watch-streams": watch_streams,
    "blind-outcomes": blind_outcomes,
    "sessions-move-on-refusal": sessions_move_on_refusal,
    "cancel-hits-batch": cancel_hits_batch,
}
