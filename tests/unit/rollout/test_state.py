"""The rollout state machine: traffic at every state, transitions, argument rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serveplane.exceptions import InvalidConfigError
from serveplane.rollout import Guards, Rollout, RolloutState, Verdict, split, validate_rollout

S = RolloutState
SOURCE = {"v1": 0.9, "v0": 0.1}


def make(shadow_s: float = 0.0, steps=(0.05, 0.25, 1.0)) -> Rollout:
    return Rollout(endpoint="ep", backend="v2", source=SOURCE, source_shadows={"v3": 0.2},
                   steps=tuple(steps), interval_s=10, guards=Guards(min_requests=10), shadow_s=shadow_s,
                   state=S.SHADOWING if shadow_s else S.RUNNING, step=-1 if shadow_s else 0)


ADVANCE = Verdict("advance", "every guard holds", {"canary_requests": 10})
BREACH = Verdict("breach", "canary error rate 0.3 > max_error_rate 0.05 over 64 requests", {})
WAIT = Verdict("wait", "5 of min_requests 10", {})


def test_canary_weight_is_taken_from_the_source_in_proportion():
    traffic = split(SOURCE, "v2", 0.2)
    assert traffic == pytest.approx({"v1": 0.9 * 0.8, "v0": 0.1 * 0.8, "v2": 0.2})
    assert split(SOURCE, "v2", 1.0) == {"v2": 1.0}


def test_steps_advance_to_success_and_leave_the_canary_alone():
    r = make()
    assert r.routing() == (pytest.approx({"v1": 0.855, "v0": 0.095, "v2": 0.05}), {"v3": 0.2})
    r = r.judge(ADVANCE, 1.0)
    assert (r.state, r.step, r.weight) == (S.RUNNING, 1, 0.25)
    assert r.judge(WAIT, 2.0) is None
    r = r.judge(ADVANCE, 3.0).judge(ADVANCE, 4.0)
    assert r.state is S.SUCCEEDED and r.routing() == ({"v2": 1.0}, {"v3": 0.2})
    assert [h.decision.split(":")[0] for h in r.history] == [
        "advanced to step 1 (weight 0.25)", "advanced to step 2 (weight 1)", "succeeded"]


def test_a_breach_restores_the_source_exactly_with_the_reason():
    r = make().judge(ADVANCE, 1.0).judge(BREACH, 2.0)
    assert r.state is S.ROLLED_BACK and r.reason == BREACH.reason
    assert r.routing() == (SOURCE, {"v3": 0.2})
    assert r.judge(ADVANCE, 3.0) is None  # final


def test_shadow_phase_sends_no_live_traffic_to_the_canary():
    r = make(shadow_s=30)
    traffic, shadows = r.routing()
    assert traffic == SOURCE and shadows == {"v3": 0.2, "v2": 1.0}
    rolled = r.judge(BREACH, 1.0)
    assert rolled.routing() == (SOURCE, {"v3": 0.2})
    running = r.judge(ADVANCE, 1.0)
    assert (running.state, running.step) == (S.RUNNING, 0) and "v2" not in running.routing()[1]


def test_pause_resume_abort():
    r = make().pause(1.0, "paused by the operator")
    assert r.state is S.PAUSED and r.judge(ADVANCE, 2.0) is None
    r = r.resume(3.0)
    assert r.state is S.RUNNING and r.step_started_at == 3.0
    r = r.abort(4.0, "aborted by the operator")
    assert r.state is S.ABORTED and r.routing() == (SOURCE, {"v3": 0.2})
    with pytest.raises(InvalidConfigError, match="already ended"):
        r.abort(5.0, "again")
    with pytest.raises(InvalidConfigError, match="only a paused rollout can be resumed"):
        make().resume(1.0)


@pytest.mark.parametrize("steps,guards,match", [
    ([0.5, 0.25], None, "not increasing"),
    ([0.0, 1.0], None, r"every step is a weight in \(0, 1\]"),
    ([0.5, 1.5], None, r"every step is a weight in \(0, 1\]"),
    ([], None, "empty"),
    ("0.5", None, "not a list"),
    ([0.5, 1.0], {"max_eror_rate": 0.1}, "unknown rollout guard.*'max_eror_rate'"),
    ([0.5, 1.0], {"max_error_rate": 2}, "rollout guards .* are invalid"),
], ids=["decreasing", "zero", "above-one", "empty", "string", "unknown-guard", "bad-guard"])
def test_bad_arguments_are_refused_naming_the_value_and_the_rule(steps, guards, match):
    with pytest.raises(InvalidConfigError, match=match):
        validate_rollout("ep", "v2", SOURCE, steps, 10, guards, 0, 1.0)


def test_a_canary_already_at_full_weight_is_refused():
    with pytest.raises(InvalidConfigError, match="already serves all of endpoint 'ep'"):
        validate_rollout("ep", "v2", {"v2": 1.0}, [0.5, 1.0], 10, None, 0, 1.0)


@given(st.lists(st.sampled_from(["advance", "wait", "breach", "pause", "resume"]), max_size=20),
       st.lists(st.floats(0.01, 1.0), min_size=1, max_size=5, unique=True))
def test_the_canary_never_gets_more_than_its_step_and_final_states_are_exact(moves, weights):
    steps = tuple(sorted(weights))
    r = make(steps=steps)
    for i, move in enumerate(moves):
        try:
            if move in ("advance", "wait", "breach"):
                nxt = r.judge({"advance": ADVANCE, "wait": WAIT, "breach": BREACH}[move], float(i))
                r = nxt or r
            elif move == "pause":
                r = r.pause(float(i), "pause")
            else:
                r = r.resume(float(i))
        except InvalidConfigError:
            continue
        traffic, _ = r.routing()
        if r.state is S.ROLLED_BACK:
            assert traffic == SOURCE
        elif r.state is S.SUCCEEDED:
            assert traffic == {"v2": 1.0}
        else:
            assert traffic.get("v2", 0.0) <= r.steps[r.step] + 1e-12
            assert abs(sum(traffic.values()) - 1.0) < 1e-9
