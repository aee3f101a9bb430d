"""Guard logic with fixed windows (no Ray, no clock): when a canary may advance, when it must
be rolled back, and when it must wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serveplane.rollout import Guards, ShadowWindow, Window, evaluate, evaluate_shadow, wilson
from serveplane.rollout.histogram import BOUNDS, N_BUCKETS, bucket_of, quantile


def window(requests: int, failures: int = 0, latency_s: float = 0.01) -> Window:
    w = Window(requests=requests, app_errors=failures)
    w.latency[bucket_of(latency_s)] += requests
    return w


GUARDS = Guards(max_error_rate=0.05, max_latency_ratio=1.5, min_requests=200)


def test_wilson_interval_brackets_the_proportion():
    low, high = wilson(20, 64)
    assert low < 20 / 64 < high and 0.15 < low  # 99 % interval
    assert wilson(0, 0) == (0.0, 1.0)


def test_a_good_canary_advances_once_interval_and_requests_suffice():
    assert evaluate(GUARDS, window(250), window(2000), interval_over=True).kind == "advance"
    verdict = evaluate(GUARDS, window(250), window(2000), interval_over=False)
    assert verdict.kind == "wait" and "interval_s" in verdict.reason
    verdict = evaluate(GUARDS, window(199), window(2000), interval_over=True)
    assert verdict.kind == "wait" and "199 of min_requests 200" in verdict.reason


def test_a_failing_canary_is_rolled_back_mid_step_naming_guard_reading_and_limit():
    verdict = evaluate(GUARDS, window(64, failures=20), window(600), interval_over=False)
    assert verdict.kind == "breach"
    assert verdict.reason == "canary error rate 0.312 > max_error_rate 0.05 over 64 requests"


def test_one_failure_in_a_few_requests_does_not_roll_back():
    guards = Guards(max_error_rate=0.01, min_requests=200)
    assert evaluate(guards, window(20, failures=1), window(600), interval_over=True).kind == "wait"


def test_a_slow_canary_is_rolled_back_by_the_latency_guard():
    verdict = evaluate(GUARDS, window(60, latency_s=0.030), window(600, latency_s=0.010), False)
    assert verdict.kind == "breach" and "max_latency_ratio 1.5" in verdict.reason
    assert verdict.readings["latency_ratio"] > 2


def test_latency_is_not_judged_on_a_handful_of_samples():
    verdict = evaluate(GUARDS, window(5, latency_s=0.5), window(600, latency_s=0.01), False)
    assert verdict.kind == "wait"


def test_shadow_phase_rolls_back_on_disagreement_and_advances_on_agreement():
    guards = Guards(min_shadow_agreement=0.99, min_requests=100)
    breach = evaluate_shadow(guards, ShadowWindow(compared=60, agreed=30), interval_over=False)
    assert breach.kind == "breach" and "shadow agreement 0.5 < min_shadow_agreement 0.99" in breach.reason
    assert evaluate_shadow(guards, ShadowWindow(compared=150, agreed=150), True).kind == "advance"
    assert evaluate_shadow(guards, ShadowWindow(compared=150, agreed=150), False).kind == "wait"


def test_histogram_quantile_is_within_one_bucket():
    buckets = [0] * N_BUCKETS
    for latency in (0.001,) * 98 + (0.2, 0.2):
        buckets[bucket_of(latency)] += 1
    assert quantile(buckets, 0.5) == BOUNDS[bucket_of(0.001)]
    assert 0.2 <= quantile(buckets, 0.99) <= 0.2 * 1.5
    assert quantile([0] * N_BUCKETS, 0.99) is None


@given(requests=st.integers(0, 10_000), min_requests=st.integers(1, 10_000),
       failures=st.integers(0, 10_000), slow=st.booleans(), interval_over=st.booleans())
def test_never_advances_with_fewer_than_min_requests(requests, min_requests, failures, slow, interval_over):
    guards = Guards(max_error_rate=0.5, max_latency_ratio=2.0, min_requests=min_requests)
    canary = window(requests, min(failures, requests), 0.05 if slow else 0.01)
    verdict = evaluate(guards, canary, window(1000), interval_over)
    if verdict.kind == "advance":
        assert requests >= min_requests and interval_over


@given(compared=st.integers(0, 5000), agreed_share=st.floats(0, 1), min_requests=st.integers(1, 5000))
def test_shadow_phase_never_advances_with_fewer_than_min_requests(compared, agreed_share, min_requests):
    guards = Guards(min_shadow_agreement=0.9, min_requests=min_requests)
    verdict = evaluate_shadow(guards, ShadowWindow(compared, int(compared * agreed_share)), True)
    if verdict.kind == "advance":
        assert compared >= min_requests


def test_guard_names_and_values_are_checked():
    with pytest.raises(ValueError):
        Guards(max_error_rate=1.5)


def test_sub_floor_latencies_never_breach_but_real_slowness_does():
    fast = evaluate(GUARDS, window(100, latency_s=0.003), window(600, latency_s=0.001), False)
    assert fast.kind != "breach"  # 3 ms against 1 ms: within the 5 ms floor
    slow = evaluate(GUARDS, window(100, latency_s=0.06), window(600, latency_s=0.001), False)
    assert slow.kind == "breach"


def test_one_cold_outlier_is_not_a_slow_canary():
    canary = window(30, latency_s=0.002)
    canary.latency[bucket_of(0.04)] += 1  # its first, cold call
    canary.requests += 1
    verdict = evaluate(GUARDS, canary, window(600, latency_s=0.01), interval_over=False)
    assert verdict.kind != "breach", verdict.reason


def test_no_breach_on_fewer_than_ten_samples_however_bad():
    assert evaluate(GUARDS, window(2, failures=1), window(600), False).kind == "wait"
    assert evaluate(GUARDS, window(12, failures=6), window(600), False).kind == "breach"
