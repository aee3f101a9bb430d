"""Fuzzing the real proxy over real sockets: random methods, paths, query strings, headers
(API keys and X-SERVE-* among them) and bodies (some over max_body_bytes).

Each request: never a 5xx except the user's own 500 (the backend raises exactly when the
request says "boom", and the 500 then carries an error id only); a method the backend does
not expose is never reached; the proxy answers /-/healthz after it. After all of them: nothing
is left in flight or held, and the proxy's memory has not grown beyond a bound.
"""

from __future__ import annotations

import string

import httpx
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.integration.http.backends import FuzzTarget
from tests.integration.http.helpers import proxy, statistics, wait_route

pytestmark = [pytest.mark.ray]

KEY = "fuzz-key-0123456789abcdef"
MAX_BODY = 64 * 1024
MB = 1024 * 1024

token = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
header_value = st.text(string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
                       .replace("\x0c", ""), max_size=200).map(str.strip)
segment = st.one_of(st.sampled_from(["f", "g", "-", "healthz", "routes", "metrics", "..", ".", "%2e%2e", "f%2F",
                                     "%00", "~", "x" * 300]),
                    st.text(string.ascii_letters + string.digits + "-._~%", max_size=20))
call_method = st.one_of(st.sampled_from(["echo", "hidden", "reconfigure", "check_health", "__call__", "_x",
                                         "__init__", "__class__", "", "echo.x", "a" * 500]), token)
requests = st.fixed_dictionaries({
    "method": st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]),
                        st.text(string.ascii_uppercase, min_size=1, max_size=10)),
    "path": st.one_of(st.sampled_from(["/f", "/f", "/f/", "/g", "/-/routes", "/-/metrics", "/-/healthz"]),
                      st.lists(segment, max_size=4).map(lambda parts: "/f/" + "/".join(parts)),
                      st.lists(segment, max_size=5).map(lambda parts: "/" + "/".join(parts))),
    "query": st.dictionaries(token, st.one_of(header_value, st.just("boom")), max_size=3),
    "auth": st.sampled_from([f"Bearer {KEY}", f"Bearer {KEY}", "Bearer wrong-key-0123456789", "", f"Basic {KEY}"]),
    "headers": st.dictionaries(st.one_of(st.sampled_from(["X-SERVE-SHARD-KEY", "X-SERVE-SESSION-ID", "Content-Type",
                                                          "Content-Encoding", "Transfer-Encoding", "Expect"]),
                                         token.map(lambda t: "X-" + t)), header_value, max_size=4),
    "call_method": st.one_of(st.none(), st.none(), call_method),
    "body": st.one_of(st.binary(max_size=512), st.just(b"boom"),
                      st.sampled_from([MAX_BODY, MAX_BODY + 1, 3 * MAX_BODY]).map(lambda n: b"b" * n)),
})


@pytest.fixture(scope="module")
def fuzz_proxy(ray_session):
    with proxy(api_keys=[KEY], max_body_bytes=MAX_BODY, request_timeout_s=20, body_read_timeout_s=10,
               max_concurrent_requests=32) as (client, base):
        client.create_backend("t", FuzzTarget)
        client.create_endpoint("f", backend="t", route="/f", methods=["GET", "POST", "PUT", "DELETE", "PATCH",
                                                                      "HEAD", "OPTIONS"])
        client.create_endpoint("g", backend="t", route="/g", methods=["GET"])
        wait_route(base, "/g", headers={"Authorization": f"Bearer {KEY}"})
        yield client, base


def test_random_requests_never_take_the_proxy_down(fuzz_proxy):
    client, base = fuzz_proxy
    http = httpx.Client(timeout=60)
    for _ in range(20):  # warm
        http.post(f"{base}/f", content=b"w" * MAX_BODY, headers={"Authorization": f"Bearer {KEY}"})
    before = statistics(client)
    seen: dict[int, int] = {}

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(req=requests)
    def one(req):
        headers = dict(req["headers"])
        if req["auth"]:
            headers["Authorization"] = req["auth"]
        if req["call_method"] is not None:
            headers["X-SERVE-CALL-METHOD"] = req["call_method"]
        try:
            r = http.request(req["method"], base + req["path"], params=req["query"], headers=headers,
                             content=req["body"])
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL):
            reject()  # httpx refuses to send it: not a request the proxy ever sees
        except httpx.RemoteProtocolError:
            r = None  # the server refused the framing (e.g. a bad Transfer-Encoding) and closed
        if r is not None:
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            asked = b"boom" in req["body"] or any("boom" in v for v in req["query"].values())
            if r.status_code >= 500:
                assert r.status_code == 500 and asked, (req, r.status_code, r.text[:300])
                if req["method"] != "HEAD":
                    assert set(r.json()) == {"error", "error_id"} and "failed, as asked" not in r.text
            assert "should never be reached over HTTP" not in r.text
        assert http.get(f"{base}/-/healthz").text == "ok"

    one()
    after = statistics(client)
    grown = (after["peak_rss_bytes"] - before["rss_bytes"]) / MB
    print(f"\n[proxy fuzz] answers by status: {dict(sorted(seen.items()))}; resident memory "
          f"{before['rss_bytes'] / MB:.0f} MiB before, peak {after['peak_rss_bytes'] / MB:.0f} MiB")
    assert after["in_flight"] == 0 and after["buffered_body_bytes"] == 0
    assert grown < 64, f"the proxy grew {grown:.0f} MiB"
    assert all(seen.get(status) for status in (200, 401, 404, 405, 413, 500)), seen
