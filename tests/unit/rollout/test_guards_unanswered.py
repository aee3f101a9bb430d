"""Guards see requests that never answered (timed out, expired in a queue, refused by
back-pressure) as failures of the canary, cancels as neither; and a step that makes no
progress for too long breaches with its own reason. Pure: fixed windows, no clock."""

from __future__ import annotations

import pytest

from serveplane.exceptions import InvalidConfigError
from serveplane.rollout import Guards, Progress, ShadowWindow, Window, evaluate, evaluate_shadow, validate_rollout
from serveplane.rollout.guards import DEFAULT_PROGRESS_DEADLINE_S, progress_deadline
from serveplane.rollout.histogram import bucket_of


def answered(requests: int, latency_s: float = 0.01, **unanswered: int) -> Window:
    w = Window(requests=requests, **unanswered)
    w.latency[bucket_of(latency_s)] += requests
    return w


GUARDS = Guards(max_error_rate=0.05, max_latency_ratio=1.5, min_requests=100)
BASELINE = answered(2000)


@pytest.mark.parametrize("kind,phrase", [
    ("timed_out", "40 timed out"),
    ("expired", "40 expired before they ran"),
    ("refused", "40 refused by back-pressure"),
], ids=["timeouts", "expiries", "refusals"])
def test_a_canary_whose_requests_never_answer_breaches_naming_how(kind, phrase):
    verdict = evaluate(GUARDS, answered(0, **{kind: 40}), BASELINE, interval_over=False)
    assert verdict.kind == "breach"
    assert verdict.reason.startswith("canary error rate 1 > max_error_rate 0.05 over 40 requests")
    assert phrase in verdict.reason
    assert verdict.readings[f"canary_{kind}"] == 40 and verdict.readings["canary_failures"] == 40


def test_unanswered_requests_count_with_answers_in_the_error_rate():
    # 20 answers, 44 timeouts: 44 / 64 fail
    verdict = evaluate(GUARDS, answered(20, timed_out=44), BASELINE, interval_over=False)
    assert verdict.kind == "breach" and "over 64 requests" in verdict.reason
    assert verdict.readings["error_rate"] == pytest.approx(44 / 64)


def test_cancels_are_counted_and_shown_but_are_not_errors():
    verdict = evaluate(GUARDS, answered(150, cancelled=500), BASELINE, interval_over=True)
    assert verdict.kind == "advance"
    assert verdict.readings["canary_cancelled"] == 500 and verdict.readings["error_rate"] == 0


def test_a_few_timeouts_among_many_answers_do_not_roll_back():
    verdict = evaluate(GUARDS, answered(300, timed_out=2), BASELINE, interval_over=True)
    assert verdict.kind == "advance"


def test_timeouts_do_not_count_towards_min_requests():
    """A canary that only hangs never shows the answers a step needs, with or without an
    error guard (without one, the progress deadline ends it)."""
    guards = Guards(min_requests=100)
    verdict = evaluate(guards, answered(10, timed_out=500), BASELINE, interval_over=True)
    assert verdict.kind == "wait" and "10 of min_requests 100" in verdict.reason


def test_a_step_without_enough_requests_past_its_progress_deadline_breaches():
    progress = Progress(step=2, elapsed_s=601.0, deadline_s=600.0)
    verdict = evaluate(GUARDS, answered(3), BASELINE, interval_over=True, progress=progress)
    assert verdict.kind == "breach"
    assert verdict.reason.startswith("step 2 reached 3 of min_requests 100 in 601 s "
                                     "(progress_deadline_s 600)")
    before = Progress(step=2, elapsed_s=599.0, deadline_s=600.0)
    assert evaluate(GUARDS, answered(3), BASELINE, interval_over=True, progress=before).kind == "wait"


def test_the_progress_reason_says_where_the_other_requests_went():
    guards = Guards(min_requests=100)  # no error guard: only the deadline ends a hung canary
    progress = Progress(step=0, elapsed_s=700.0, deadline_s=600.0)
    verdict = evaluate(guards, answered(0, timed_out=57, expired=3, cancelled=2), BASELINE,
                       interval_over=True, progress=progress)
    assert verdict.kind == "breach"
    assert "step 0 reached 0 of min_requests 100" in verdict.reason
    assert "57 timed out" in verdict.reason and "3 expired" in verdict.reason
    assert "2 cancelled" in verdict.reason


def test_a_canary_that_never_becomes_ready_breaches_with_its_own_reason():
    progress = Progress(step=0, elapsed_s=600.0, deadline_s=600.0,
                        canary_unready="backend 'v2' has no ready replica (1 starting)")
    verdict = evaluate(GUARDS, answered(0), BASELINE, interval_over=True, progress=progress)
    assert verdict.kind == "breach"
    assert verdict.reason.startswith("step 0: the canary never became ready in 600 s "
                                     "(progress_deadline_s 600): backend 'v2' has no ready replica")


def test_enough_requests_make_the_deadline_irrelevant():
    progress = Progress(step=1, elapsed_s=5000.0, deadline_s=600.0)
    assert evaluate(GUARDS, answered(150), BASELINE, interval_over=True, progress=progress).kind == "advance"


def test_the_shadow_phase_has_a_progress_deadline_too():
    progress = Progress(step=-1, elapsed_s=900.0, deadline_s=600.0)
    verdict = evaluate_shadow(GUARDS, ShadowWindow(compared=4, agreed=4), False, progress=progress)
    assert verdict.kind == "breach"
    assert verdict.reason.startswith("the shadow phase compared 4 of min_requests 100 answers in 900 s "
                                     "(progress_deadline_s 600)")


def test_older_routers_without_the_new_counters_read_as_zero():
    w = Window.from_report({"requests": 5, "app_errors": 1, "replica_failures": 0, "latency": [0] * 31})
    assert (w.timed_out, w.cancelled, w.expired, w.refused, w.failures) == (0, 0, 0, 0, 1)


def test_the_default_progress_deadline_gives_a_long_interval_time_to_gather_requests():
    assert progress_deadline(Guards(), interval_s=60) == DEFAULT_PROGRESS_DEADLINE_S
    assert progress_deadline(Guards(), interval_s=3600) == 7200
    assert progress_deadline(Guards(progress_deadline_s=30), interval_s=3600) == 30


@pytest.mark.parametrize("value", [0, -5, float("inf"), float("nan"), "soon", True],
                         ids=["zero", "negative", "inf", "nan", "text", "bool"])
def test_progress_deadline_s_is_validated_with_a_clear_error(value):
    with pytest.raises(InvalidConfigError, match=r"progress_deadline_s .* must be a finite number of "
                                                 r"seconds > 0"):
        validate_rollout("ep", "v2", {"v1": 1.0}, [0.1, 1.0], 10, {"progress_deadline_s": value}, 0, 1)


def test_a_bad_guard_value_says_which_rule_it_broke():
    with pytest.raises(InvalidConfigError, match=r"min_requests: .*greater than or equal to 1"):
        validate_rollout("ep", "v2", {"v1": 1.0}, [0.1, 1.0], 10, {"min_requests": 0}, 0, 1)


def test_the_rollout_view_shows_the_progress_deadline_in_force():
    from serveplane.rollout import Rollout, RolloutState

    rollout = Rollout(endpoint="ep", backend="v2", source={"v1": 1.0}, source_shadows={}, steps=(0.1, 1.0),
                      interval_s=900, guards=Guards(), state=RolloutState.RUNNING, step=0)
    assert rollout.public()["progress_deadline_s"] == 1800
    assert "progress_deadline_s" not in rollout.public()["guards"]
