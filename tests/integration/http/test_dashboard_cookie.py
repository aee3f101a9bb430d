"""The dashboard's key-for-cookie trade on a real proxy: a browser-like client that follows
the redirect ends on the clean URL and reads the page and its live feed by the cookie."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.http.helpers import proxy

pytestmark = [pytest.mark.ray]

KEY = "dash-key-0123456789abcdef"


@pytest.mark.timeout(120)
def test_the_dashboard_url_loses_its_key_and_the_feed_goes_by_the_cookie(ray_session):
    with proxy(api_keys=[KEY]) as (client, base):
        with httpx.Client(base_url=base, timeout=10) as browser:
            page = browser.get(f"/-/dashboard?key={KEY}", follow_redirects=True)
            assert page.status_code == 200 and str(page.url) == f"{base}/-/dashboard"
            assert [r.status_code for r in page.history] == [303] and KEY not in page.text
            assert browser.get("/-/dashboard/static/dashboard.js").status_code == 200
            with browser.stream("GET", "/-/dashboard/events") as feed:
                assert feed.status_code == 200
                assert feed.headers["content-type"].startswith("text/event-stream")
                assert next(feed.iter_bytes()).startswith(b"retry:")
        assert httpx.get(f"{base}/-/dashboard/events", timeout=10).status_code == 401  # no cookie
