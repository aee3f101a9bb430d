"""The dashboard trades ``?key=`` for a session cookie at once: the key leaves the URL (and
the browser's history); the cookie is HttpOnly, SameSite=Strict, scoped to the dashboard's
path, short-lived, and worth nothing elsewhere, once expired or tampered with, or once its
key is no longer accepted."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serveplane.config import HTTPOptions
from serveplane.dashboard.server import SESSION_COOKIE, DashboardSessions
from serveplane.http.proxy import ProxyApp

KEY = "dash-key-0123456789abcdef"


def get(app: ProxyApp, path: str, cookie: str | None = None) -> httpx.Response:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as c:
            return await c.get(path, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else None)

    return asyncio.run(run())


def session_of(response: httpx.Response) -> str:
    header = response.headers["set-cookie"]
    return header.split(";", 1)[0].split("=", 1)[1]


def test_the_key_in_the_url_is_traded_for_a_strict_httponly_cookie_and_a_clean_url() -> None:
    app = ProxyApp(HTTPOptions(api_keys=[KEY]), "ns", {"routes": {}})
    first = get(app, f"/-/dashboard?key={KEY}")
    assert first.status_code == 303 and first.headers["location"] == "/-/dashboard"
    cookie = first.headers["set-cookie"]
    for part in ("HttpOnly", "SameSite=Strict", "Path=/-/dashboard", "Max-Age=3600"):
        assert part in cookie
    assert "Secure" not in cookie and KEY not in cookie  # plain HTTP here; never the key itself
    token = session_of(first)
    page = get(app, "/-/dashboard", token)
    assert page.status_code == 200 and "key=" not in page.text
    assert get(app, "/-/dashboard/static/dashboard.js", token).status_code == 200
    assert get(app, "/-/dashboard/stats", token).status_code == 200
    assert get(app, "/-/dashboard").status_code == 401       # no cookie, no key
    assert get(app, "/-/routes", token).status_code == 401   # the session is the dashboard's only
    assert get(app, "/-/dashboard", token[:-1] + ("0" if token[-1] != "0" else "1")).status_code == 401


def test_a_session_expires_and_dies_with_its_key(tmp_path) -> None:
    now = [1000.0]
    sessions = DashboardSessions(clock=lambda: now[0], ttl_s=60)
    token = sessions.issue("abcdef012345")
    assert sessions.key_id(token) == "abcdef012345"
    now[0] += 61
    assert sessions.key_id(token) is None
    keys_file = tmp_path / "keys"
    keys_file.write_text(KEY + "\n")
    app = ProxyApp(HTTPOptions(api_keys_file=str(keys_file)), "ns", {"routes": {}})
    token = session_of(get(app, f"/-/dashboard?key={KEY}"))
    assert get(app, "/-/dashboard", token).status_code == 200
    keys_file.write_text("another-key-0123456789abcdef\n")
    app.keys._checked_at = -float("inf")  # the file is re-read at the next check
    assert get(app, "/-/dashboard", token).status_code == 401


@pytest.mark.parametrize("token", ["", "x", "1.2", "9999999999.abcdef012345.nothex", "a.b.c.d"])
def test_malformed_tokens_are_refused(token: str) -> None:
    assert DashboardSessions().key_id(token) is None
