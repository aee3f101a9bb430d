"""What a failed attempt means for its request (pure: property-tested without Ray).

``decide`` maps a classified failure and the request's history to one verdict:

- ``ANSWER``: the user's code ran and raised: the caller gets that error;
- ``TRY_ELSEWHERE``: the replica refused it without running it (full or draining): route
  it again, not counted as a retry, never refused for ``idempotent=False``;
- ``RETRY``: the replica died or is unreachable and the request may run again
  (``idempotent`` and retries left);
- ``RESEND``: an argument's producer died, so the request did not run: it is sent again
  once that argument is final (its own retries decide), not counted as a retry; if every
  argument was already final, the argument is lost: ``FAIL``;
- ``FAIL``: it may have run and may not run again (``why`` says which rule), or the
  retries are spent; a stream that already delivered chunks always fails.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from serveplane.router.transport import Failure


class Verdict(str, enum.Enum):
    ANSWER = "answer"
    TRY_ELSEWHERE = "try_elsewhere"
    RETRY = "retry"
    RESEND = "resend"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: str | None = None


ANSWER = Decision(Verdict.ANSWER)
TRY_ELSEWHERE = Decision(Verdict.TRY_ELSEWHERE)
RETRY = Decision(Verdict.RETRY)
RESEND = Decision(Verdict.RESEND)


def decide(kind: Failure, *, idempotent: bool, retries_done: int, max_retries: int,
           has_deps: bool, chunks_delivered: int = 0, deps_final: bool = False) -> Decision:
    if kind is Failure.DEPENDENCY_DIED and not has_deps:
        kind = Failure.APPLICATION  # about some other actor, and no argument came from one
    if kind is Failure.APPLICATION:
        return ANSWER
    if kind is Failure.REPLICA_FULL:
        return TRY_ELSEWHERE
    if chunks_delivered:
        return Decision(Verdict.FAIL, f"the stream had already delivered {chunks_delivered} chunks")
    if kind is Failure.DEPENDENCY_DIED:
        if deps_final:
            return Decision(Verdict.FAIL, "an argument's replica died after it answered: the argument is lost")
        return RESEND
    may_have_run = True
    if may_have_run and not idempotent:
        return Decision(Verdict.FAIL, "it may have run and the backend is configured idempotent=False; "
                                      "set idempotent=True in its BackendConfig if a request may run twice")
    if retries_done >= max_retries:
        return Decision(Verdict.FAIL, f"it was retried {retries_done} times (max_retries={max_retries})")
    return RETRY
