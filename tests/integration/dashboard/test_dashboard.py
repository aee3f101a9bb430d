"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by playwright):
real Ray, a real proxy on 127.0.0.1, the page following its server-sent events.

Every wait has a deadline; the page is read through the ``data-*`` attributes the script
writes (``data-weight`` on each split segment, ``data-replica``/``data-state`` on replica
rows, ``data-rollout-step`` on the rollout panel).
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid

import httpx
import pytest
import ray

from serveplane.records import replica_actor_name
from tests.integration.rollout.backends import Version
from tests.integration.rollout.test_rollouts import Load

pytestmark = [pytest.mark.ray]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def instance(ray_session):
    import serveplane

    ns = f"dash-{uuid.uuid4().hex[:6]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns,
                              http_options={"host": "127.0.0.1", "port": port})
    try:
        yield client, f"http://127.0.0.1:{port}"
    finally:
        client.shutdown()


@pytest.fixture
def page(browser, instance):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(instance[1] + "/-/dashboard")
    try:
        yield page
    finally:
        page.close()
    assert not errors, errors


def split_of(page, endpoint: str) -> dict[str, float]:
    return page.evaluate(
        """(ep) => Object.fromEntries([...document.querySelectorAll(
               `[data-endpoint="${ep}"] .split-seg`)].map(s => [s.dataset.backend, Number(s.dataset.weight)]))""",
        endpoint)


def replicas_of(page, backend: str) -> dict[str, str]:
    return page.evaluate(
        """(b) => Object.fromEntries([...document.querySelectorAll(
               `.card[data-backend="${b}"] tr[data-replica]`)].map(r => [r.dataset.replica, r.dataset.state]))""",
        backend)


def wait_until(check, timeout_s: float, what: str, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g}s (last: {value!r})"
        time.sleep(every_s)


def test_the_page_shows_a_new_traffic_split_within_a_second(instance, page):
    client, _ = instance
    client.create_backend("split:a", Version, "a", ray_actor_options={"num_cpus": 0.1})
    client.create_backend("split:b", Version, "b", ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("split", backend="split:a")
    wait_until(lambda: split_of(page, "split") == {"split:a": 1.0}, 10, "the endpoint on the page")

    for weights in ({"split:a": 0.3, "split:b": 0.7}, {"split:a": 0.9, "split:b": 0.1}):
        client.set_traffic("split", weights)
        changed = time.monotonic()
        wait_until(lambda: split_of(page, "split") == weights, 1.0, f"split {weights} on the page")
        print(f"set_traffic -> page: {time.monotonic() - changed:.3f}s")
    client.delete_endpoint("split")
    wait_until(lambda: not page.query_selector('[data-endpoint="split"]'), 2, "deleted endpoint gone")


def test_a_killed_replica_goes_and_its_replacement_appears(instance, page):
    client, _ = instance
    client.create_backend("kill:a", Version, "a", ray_actor_options={"num_cpus": 0.1},
                          config={"num_replicas": 1, "health_check_period_s": 0.5})
    shown = wait_until(lambda: replicas_of(page, "kill:a"), 10, "the replica on the page")
    assert list(shown.values()) == ["RUNNING"]
    (old,) = shown
    ray.kill(ray.get_actor(replica_actor_name("kill:a", old), namespace=client._namespace), no_restart=True)

    wait_until(lambda: old not in replicas_of(page, "kill:a"), 15, "the killed replica gone")
    now = wait_until(lambda: [t for t, s in replicas_of(page, "kill:a").items() if s == "RUNNING"], 30,
                     "a replacement RUNNING")
    assert old not in now
    client.delete_backend("kill:a")


def test_a_rollout_step_moves_on_the_page(instance, page):
    client, _ = instance
    client.create_backend("roll:v1", Version, "v1", ray_actor_options={"num_cpus": 0.1})
    client.create_backend("roll:v2", Version, "v2", ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("roll", backend="roll:v1")
    wait_until(lambda: split_of(page, "roll") == {"roll:v1": 1.0}, 10, "the endpoint on the page")
    page.evaluate("""() => { window.seenSteps = [];
        new MutationObserver(() => document.querySelectorAll('[data-endpoint="roll"] [data-rollout-step]')
            .forEach(e => window.seenSteps.push(e.dataset.rolloutStep + ":" + e.dataset.rolloutState)))
          .observe(document.body, {subtree: true, childList: true}); }""")
    with Load(client.get_handle("roll")):
        client.start_rollout("roll", "roll:v2", steps=[0.5, 1.0], interval_s=2.0,
                             guards={"max_error_rate": 0.5, "min_requests": 5})
        wait_until(lambda: "0:running" in page.evaluate("window.seenSteps"), 5, "step 1 of 2 on the page")
        assert split_of(page, "roll") == {"roll:v1": 0.5, "roll:v2": 0.5}
        guards = page.evaluate("""[...document.querySelectorAll('[data-endpoint="roll"] [data-guard]')]
                                   .map(g => g.dataset.guard)""")
        assert set(guards) == {"max_error_rate", "min_requests"}
        wait_until(lambda: "1:running" in page.evaluate("window.seenSteps"), 30, "step 2 of 2 on the page")
        wait_until(lambda: any(s.endswith(":succeeded") for s in page.evaluate("window.seenSteps")), 30,
                   "the rollout succeeded on the page")
    assert split_of(page, "roll") == {"roll:v2": 1.0}
    history = page.inner_text('[data-endpoint="roll"] .history')
    assert "advanced to step 1" in history and "succeeded" in history


def test_serveplane_dashboard_prints_the_url(instance):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    client, base = instance
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DISPLAY", None)
    done = subprocess.run([sys.executable, "-m", "serveplane.cli", "--address", ray.get_runtime_context().gcs_address,
                           "--namespace", client._namespace, "dashboard", "--no-browser"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dashboard: {base}/-/dashboard"


def test_the_feed_is_an_event_stream_let_go_of_when_the_viewer_goes(instance):
    client, base = instance
    with httpx.stream("GET", base + "/-/dashboard/events", timeout=10) as events:
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        wait_until(lambda: next(lines).startswith("event: snapshot"), 10, "a snapshot event", every_s=0)
        stats = lambda: httpx.get(base + "/-/dashboard/stats", timeout=10).json()  # noqa: E731
        wait_until(lambda: stats()["viewers"] == 1, 5, "this stream the only viewer", every_s=0.1)
        assert stats()["events_sent"] >= 1
    wait_until(lambda: stats()["viewers"] == 0, 2, "a closed stream let go of at once", every_s=0.05)
    assert httpx.get(base + "/-/dashboard/static/../feed.py", timeout=10).status_code == 404
    assert httpx.post(base + "/-/dashboard", timeout=10).status_code == 405
