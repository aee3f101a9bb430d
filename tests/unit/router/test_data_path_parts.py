"""The router's pure parts, property-tested without Ray: slot table, wait queue, failure
decision and the request state machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serveplane.router.decision import Verdict, decide
from serveplane.router.slots import SlotTable
from serveplane.router.state import ALLOWED, IllegalTransition, RequestState, check
from serveplane.router.transport import Failure
from serveplane.router.waitqueue import WaitQueue

NAMES = st.sampled_from(["r0", "r1", "r2"])


@given(st.lists(st.tuples(st.booleans(), NAMES), max_size=200), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_slot_table_never_exceeds_a_limit_nor_goes_negative(ops, limit):
    """Claiming only when there is room keeps every replica within its limit; releasing
    more than was claimed is caught."""
    table = SlotTable()
    model = {"r0": 0, "r1": 0, "r2": 0}
    for claim, name in ops:
        if claim:
            if table.has_room(name, limit):
                table.claim(name)
                model[name] += 1
        elif model[name] > 0:
            table.release(name)
            model[name] -= 1
        else:
            with pytest.raises(AssertionError):
                table.release(name)
        assert all(table.load(n) == model[n] <= limit for n in model)
        assert table.total() == sum(model.values())


def test_slot_table_holds_a_full_replica_back_until_it_answers():
    now = [0.0]
    table = SlotTable(clock=lambda: now[0])
    first = table.refused("r0")
    assert table.refused("r0") <= first  # a refusal during the hold is the same event
    now[0] += first
    second = table.refused("r0")
    assert 0 < first < second  # grows while refusals go on
    assert "r0" in table.full.blocked()
    table.answered("r0")
    assert "r0" not in table.full.blocked()
    table.refused("r1")
    now[0] += 1.0
    assert "r1" not in table.full.blocked()  # the hold ends with time


@given(st.lists(st.tuples(st.sampled_from(["add", "take", "remove"]), st.integers(0, 9)), max_size=100))
@settings(max_examples=200, deadline=None)
def test_wait_queue_is_first_come_first_served(ops):
    queue: WaitQueue[int] = WaitQueue()
    model: list[int] = []
    for op, value in ops:
        if op == "add":
            queue.append(value)
            model.append(value)
        elif op == "take":
            fits = (lambda w, v=value: w % 3 == v % 3)
            expected = next((w for w in model if fits(w)), None)
            assert queue.take_first(fits) == expected
            if expected is not None:
                model.remove(expected)
        else:
            assert queue.remove(value) == (value in model)
            if value in model:
                model.remove(value)
        assert list(queue) == model


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b"])), max_size=100), st.integers(0, 5))
def test_wait_queue_counts_stay_within_max_queued(ops, limit):
    queue: WaitQueue[int] = WaitQueue()
    model = {"a": 0, "b": 0}
    for reserve, backend in ops:
        if reserve:
            assert queue.reserve(backend, limit) == (model[backend] < limit)
            model[backend] = min(limit, model[backend] + 1)
        elif model[backend]:
            queue.unreserve(backend)
            model[backend] -= 1
        assert queue.count(backend) == model[backend] <= limit
    assert queue.total() == sum(model.values())


@given(st.sampled_from(list(Failure)), st.booleans(), st.integers(0, 5), st.integers(0, 5), st.booleans(),
       st.integers(0, 3))
def test_decide_never_reruns_what_may_not_run_twice(kind, idempotent, retries_done, max_retries, has_deps,
                                                    chunks):
    d = decide(kind, idempotent=idempotent, retries_done=retries_done, max_retries=max_retries,
               has_deps=has_deps, chunks_delivered=chunks)
    may_have_run = kind in (Failure.REPLICA_DIED, Failure.REPLICA_UNAVAILABLE)
    if d.verdict is Verdict.RETRY:
        assert not chunks, "a stream that delivered chunks was retried"
        assert not (may_have_run and not idempotent), "a request that may have run was run again"
        assert retries_done < max_retries
    if kind is Failure.APPLICATION or (kind is Failure.DEPENDENCY_DIED and not has_deps):
        assert d.verdict is Verdict.ANSWER  # user code's error reaches the caller as is
    if kind is Failure.REPLICA_FULL:
        assert d.verdict is Verdict.TRY_ELSEWHERE  # never ran: never refused for idempotency
    if d.verdict is Verdict.RESEND:
        assert kind is Failure.DEPENDENCY_DIED and has_deps and not chunks  # it never ran
    if d.verdict is Verdict.FAIL:
        assert d.why


@given(st.lists(st.sampled_from(list(RequestState)), max_size=12))
def test_final_states_are_final(path):
    state = RequestState.NEW
    for new in path:
        if new in ALLOWED[state]:
            check(state, new)
            state = new
        else:
            with pytest.raises(IllegalTransition):
                check(state, new)
    for final in (RequestState.DONE, RequestState.FAILED, RequestState.CANCELLED):
        assert not ALLOWED[final]
