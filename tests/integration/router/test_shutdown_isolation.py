"""One client's shutdown() leaves the other namespaces of the process alone."""

from __future__ import annotations

import time
import uuid

import pytest

import serveplane
from serveplane.long_poll import LongPollClient
from serveplane.records import CONTROLLER_NAME
from tests.integration.router.backends import Echo

pytestmark = [pytest.mark.ray]


def wait_until(predicate, timeout=15.0, interval=0.02, message="condition not met in time"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(interval)


def test_shutdown_of_one_namespace_leaves_another_namespaces_handles_following_traffic(serve_instance):
    kept = serve_instance
    other_ns = f"t-{uuid.uuid4().hex[:8]}"
    other = serveplane.start(kv_store=f"ray://{other_ns}", namespace=other_ns)
    try:
        kept.create_backend("old", Echo, "old")
        kept.create_backend("new", Echo, "new")
        kept.create_endpoint("ep", backend="old")
        other.create_backend("o", Echo, "o")
        other.create_endpoint("ep", backend="o")
        # both namespaces now have a router and a long-poll client in this process
        assert other.get_handle("ep").remote(0).result(timeout=30)["tag"] == "o"
        h = kept.get_handle("ep")
        assert h.remote(1).result(timeout=30)["tag"] == "old"
    finally:
        other.shutdown()
    kept.set_traffic("ep", {"new": 1.0})
    wait_until(lambda: h.remote(2).result(timeout=30)["tag"] == "new",
               message="the kept namespace's handle still answers from the old backend")
    polls = {(c.host_actor_name, c.namespace): c for c in LongPollClient.all_clients()}
    assert (CONTROLLER_NAME, other_ns) not in polls
    assert not polls[(CONTROLLER_NAME, kept._namespace)].stopped
