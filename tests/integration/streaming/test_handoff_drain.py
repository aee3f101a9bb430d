"""Issue 22 #8: a StreamingResponse body handed off to the HTTP proxy is in flight for its
replica: a scale-down while it is mid-transfer delivers the whole body (the drain used to
return in 0.00 s after 1 of 5 parts, and the kill cut the body)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.http.helpers import proxy
from tests.integration.streaming.handoff_backends import Parts

pytestmark = pytest.mark.ray


def test_scale_down_while_a_handed_off_body_is_mid_transfer_delivers_it_whole():
    with proxy() as (client, base):
        client.create_backend("parts", Parts)
        client.create_endpoint("parts", backend="parts", route="/parts", methods=["GET"])
        lines = []
        with httpx.Client(timeout=60) as http:
            # the first request of a method returning a StreamingResponse is handed off
            with http.stream("GET", f"{base}/parts", headers={"X-SERVE-CALL-METHOD": "parts"},
                             params={"n": "5", "gap": "0.4"}) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    lines.append(line)
                    if len(lines) == 1:  # mid-transfer: scale the only replica away
                        client.update_backend_config("parts", {"num_replicas": 0}, blocking=False)
        assert lines == [f"part{i}" for i in range(5)]
        client.update_backend_config("parts", {"num_replicas": 0}, timeout_s=60)  # it drained
