"""Issue 22 #10: a sync check_health never waits behind sync requests on the worker pool.

With max_concurrent_queries=1 the pool has one worker; a long sync call holds it. A health
check queued behind it timed out, the replica was declared unhealthy and killed mid-request
(then the next one: a crash loop)."""

from __future__ import annotations

import pytest

from serveplane import BackendConfig
from tests.integration.health.drain_backends import SyncWork

pytestmark = pytest.mark.ray


def test_sync_health_check_is_answered_while_a_long_sync_call_runs(serve_instance):
    client = serve_instance
    client.create_backend("synchealth", SyncWork, config=BackendConfig(
        max_concurrent_queries=1, idempotent=False, health_check_period_s=0.2,
        health_check_timeout_s=1.0, health_check_failure_threshold=1))
    client.create_endpoint("synchealth", backend="synchealth")
    handle = client.get_handle("synchealth")
    name = handle.options(method_name="whoami").remote().result(timeout=60)
    checks_before = handle.options(method_name="checks").remote().result(timeout=60)
    # four health timeouts long: before the fix the replica was killed during this call
    assert handle.remote(4.0).result(timeout=60) == "finished"
    assert handle.options(method_name="whoami").remote().result(timeout=60) == name, \
        "the replica was replaced while it ran a request"
    checks = handle.options(method_name="checks").remote().result(timeout=60)
    assert checks - checks_before >= 5, "health checks did not run during the long call"
