"""A canary whose requests all time out is rolled back, on real Ray (issue 22, #3): before,
its timeouts never reached the guards and the rollout waited forever on "0 of
min_requests reached the canary" while its share of live traffic failed."""

from __future__ import annotations

import time

import pytest

from tests.integration.rollout.test_rollouts import Load, deploy, wait_final

pytestmark = pytest.mark.ray


def test_a_canary_whose_requests_all_time_out_is_rolled_back(serve_instance):
    client = serve_instance
    handle = deploy(client, delay_s=1.0)  # the canary answers after 1 s; callers wait 0.2 s
    guards = {"max_error_rate": 0.05, "min_requests": 30, "progress_deadline_s": 8}
    with Load(handle.options(timeout_s=0.2), in_flight=4) as load:
        started = time.monotonic()
        client.start_rollout("model", "v2", steps=[0.3, 1.0], interval_s=60, guards=guards)
        rollout, _ = wait_final(client, handle, {"v1": 1.0}, timeout_s=60)
    took = time.monotonic() - started
    assert rollout["state"] == "rolled_back" and rollout["step"] == 0, rollout["reason"]
    assert client.list_endpoints()["model"]["traffic"] == {"v1": 1.0}
    assert load.failures, "the canary's share of callers saw their deadline pass"
    print(f"\nrolled back after {took:.1f}s: {rollout['reason']}")
    counted = handle.router.statistics()["backends"].get("v2", {})
    assert counted.get("timed_out", 0) + counted.get("expired", 0) > 0, counted
    # running past the deadline, or queued behind those that do: named either way
    assert "timed out" in rollout["reason"] or "expired before they ran" in rollout["reason"], \
        rollout["reason"]
