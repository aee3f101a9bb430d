"""The proxy's memory stays bounded under many large, slow uploads (resident memory of the
proxy actor measured from /proc, before and at its peak). `benchmarks/proxy_memory.py`
measures the same workload with the bounds lifted, as the baseline."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.http.backends import Sink
from tests.integration.http.helpers import proxy, statistics, upload_until_accepted, wait_route

pytestmark = [pytest.mark.ray]

MB = 1024 * 1024
BODY = 8 * MB
BUDGET = 32 * MB
UPLOADS = 48


@pytest.mark.timeout(300)
def test_many_large_slow_uploads_keep_the_proxy_within_its_bounds(ray_session):
    options = {"max_body_bytes": BODY, "max_buffered_body_bytes": BUDGET, "max_concurrent_requests": 8,
               "body_read_timeout_s": 20, "request_timeout_s": 60}
    with proxy(**options) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        client.create_backend("sink", Sink)
        client.create_endpoint("sink", backend="sink", route="/sink", methods=["POST"])
        wait_route(base, "/sink")
        for _ in range(3):  # warm: the first bodies pay for imports and arenas
            assert httpx.post(f"{base}/sink", content=b"w" * BODY, timeout=60).json() == {"bytes": BODY}
        before = statistics(client)
        with ThreadPoolExecutor(UPLOADS) as pool:
            outcomes = list(pool.map(lambda _: upload_until_accepted(port, "/sink", BODY, 256 * 1024, 0.02),
                                     range(UPLOADS)))
        statuses = collections.Counter(status for status, _ in outcomes)
        after = statistics(client)
        grown = (after["peak_rss_bytes"] - before["rss_bytes"]) / MB
        print(f"\n[proxy memory] {UPLOADS} uploads of {BODY // MB} MiB at once, each retried after a "
              f"503: answers {dict(statuses)} after {sum(n for _, n in outcomes)} 503s; "
              f"peak in flight {after['peak_in_flight']}, peak bodies held "
              f"{after['peak_buffered_body_bytes'] / MB:.0f} MiB; resident memory "
              f"{before['rss_bytes'] / MB:.0f} MiB before, peak {after['peak_rss_bytes'] / MB:.0f} MiB "
              f"(+{grown:.0f} MiB), {after['rss_bytes'] / MB:.0f} MiB after, of which shared "
              f"(the object store's pages) {after['rss_shmem_bytes'] / MB:.0f} MiB, anonymous "
              f"{after['rss_anon_bytes'] / MB:.0f} MiB ({before['rss_anon_bytes'] / MB:.0f} MiB before)")
        assert statuses == {"200": UPLOADS}, statuses
        assert after["peak_in_flight"] <= 8 and after["peak_buffered_body_bytes"] <= BUDGET
        assert after["in_flight"] == 0 and after["buffered_body_bytes"] == 0
        # the bodies held, a copy of each while it is joined and serialized, and slack
        assert grown < 3 * BUDGET / MB + 64, f"resident memory grew {grown:.0f} MiB"
        assert httpx.get(f"{base}/-/healthz").text == "ok"
