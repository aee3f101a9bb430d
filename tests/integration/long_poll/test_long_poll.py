"""LongPollClient against a real Ray actor hosting a LongPollHost."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, Callable, Iterator

import pytest
import ray

from serveplane.long_poll import LONG_POLL_TIMEOUT, LongPollClient, LongPollHost

from tests.integration.long_poll.conftest import NAMESPACE

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

CATCH_UP_S = 30.0  # a deadline, not a wait: generous for a loaded 2-core machine


@ray.remote(num_cpus=0)
class PollHostActor:
    """The smallest controller: a LongPollHost behind two RPCs."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._host = LongPollHost(timeout_s=timeout_s)

    async def notify(self, key: str, value: Any) -> None:
        self._host.notify_changed(key, value)

    async def delete(self, key: str) -> None:
        self._host.delete_key(key)

    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, str | None]) -> Any:
        return await self._host.listen_for_change(keys_to_snapshot_ids)

    async def num_listeners(self) -> int:
        return self._host.num_listeners()

    async def instance_id(self) -> str:
        return self._host.instance_id


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.02)


class Recorder:
    """Values delivered to callbacks, by subscriber name (callbacks run on client threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, list[Any]] = defaultdict(list)

    def callback(self, name: str) -> Callable[[Any], None]:
        def record(value: Any) -> None:
            with self._lock:
                self.calls[name].append(value)
        return record

    def last(self, name: str) -> Any:
        with self._lock:
            values = self.calls.get(name)
            return values[-1] if values else None

    def called(self) -> set[str]:
        with self._lock:
            return {name for name, values in self.calls.items() if values}

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()


@pytest.fixture
def make_host(ray_session) -> Iterator[Callable[..., tuple[str, Any]]]:
    """Create named, detached host actors; every one made is killed at teardown."""
    made: list[Any] = []

    def make(name: str | None = None, **options: Any) -> tuple[str, Any]:
        name = name or f"lp-host-{uuid.uuid4().hex[:8]}"
        timeout_s = options.pop("timeout_s", 2.0)
        actor = PollHostActor.options(name=name, namespace=NAMESPACE, lifetime="detached",
                                      **options).remote(timeout_s)
        ray.get(actor.num_listeners.remote(), timeout=30)
        made.append(actor)
        return name, actor

    try:
        yield make
    finally:
        for actor in made:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass


def test_only_subscribers_of_the_changed_key_are_called(make_host, make_client):
    name, host = make_host()
    keys = [f"k{i}" for i in range(25)]
    ray.get([host.notify.remote(key, 0) for key in keys] + [host.notify.remote("barrier", 0)])
    clients = [make_client(name) for _ in range(10)]
    rec = Recorder()
    subscribers: dict[str, list[str]] = defaultdict(list)
    for c, client in enumerate(clients):
        client.subscribe("barrier", rec.callback(f"barrier@{c}"))
        for j in range(10):  # 100 subscriptions, 4 per key, spread over the clients
            key = keys[(c * 10 + j) % len(keys)]
            sub_name = f"{key}@{c}/{j}"
            subscribers[key].append(sub_name)
            client.subscribe(key, rec.callback(sub_name))
    all_subs = [s for subs in subscribers.values() for s in subs]
    assert len(all_subs) == 100
    wait_until(lambda: all(rec.last(s) == 0 for s in all_subs), CATCH_UP_S, "the initial values")
    rec.clear()

    ray.get(host.notify.remote("k7", 1))
    # The barrier is published after k7: once every client has it, any delivery the k7
    # change could cause has happened.
    ray.get(host.notify.remote("barrier", 1))
    wait_until(lambda: all(rec.last(f"barrier@{c}") == 1 for c in range(10)), CATCH_UP_S,
               "the barrier on every client")

    called = rec.called() - {f"barrier@{c}" for c in range(10)}
    assert called == set(subscribers["k7"])
    assert all(rec.calls[s] == [1] for s in subscribers["k7"])


def test_late_subscriber_gets_known_value_and_new_key_does_not_wait_for_timeout(make_host, make_client):
    # A 30 s host timeout: if a new key waited for the in-flight call to end, this would fail.
    name, host = make_host(timeout_s=30.0)
    ray.get([host.notify.remote("a", "a1"), host.notify.remote("b", "b1")])
    client = make_client(name)
    rec = Recorder()
    client.subscribe("a", rec.callback("first"))
    wait_until(lambda: rec.last("first") == "a1", CATCH_UP_S, "a's first value")

    started = time.monotonic()
    client.subscribe("b", rec.callback("b"))  # a listen on {"a"} is in flight
    wait_until(lambda: rec.last("b") == "b1", 3.0, "a key subscribed while a call was in flight")
    assert time.monotonic() - started < 3.0

    client.subscribe("a", rec.callback("late"))  # already known: delivered without a host round
    wait_until(lambda: rec.last("late") == "a1", 3.0, "the known value for a late subscriber")
    assert rec.calls["late"] == ["a1"] and rec.calls["first"] == ["a1"]

    # Abandoned calls are cancelled on the host, not left waiting for their 30 s timeout.
    for i in range(10):
        client.subscribe(f"extra{i}", rec.callback(f"extra{i}"))
    wait_until(lambda: ray.get(host.num_listeners.remote(), timeout=10) == 1, CATCH_UP_S,
               "the host to hold exactly one listen call from the client")


def test_values_of_a_key_arrive_in_host_order(make_host, make_client):
    name, host = make_host()
    client = make_client(name)
    rec = Recorder()
    client.subscribe("n", rec.callback("n"))
    for i in range(1, 51):
        host.notify.remote("n", i)  # actor calls from one caller run in order
    wait_until(lambda: rec.last("n") == 50, CATCH_UP_S, "the last of 50 values")
    values = rec.calls["n"]
    assert values == sorted(set(values)), f"values out of order or repeated: {values}"


def test_a_raising_callback_is_logged_and_does_not_stop_updates(make_host, make_client, caplog):
    name, host = make_host()
    client = make_client(name)
    rec = Recorder()

    def broken(value: Any) -> None:
        raise RuntimeError(f"callback bug on {value}")

    client.subscribe("k", broken)
    client.subscribe("k", rec.callback("ok"))
    with caplog.at_level(logging.ERROR, logger="serveplane.long_poll.client"):
        ray.get(host.notify.remote("k", 1))
        wait_until(lambda: rec.last("ok") == 1, CATCH_UP_S, "the first value")
        ray.get(host.notify.remote("k", 2))
        wait_until(lambda: rec.last("ok") == 2, CATCH_UP_S, "a value after the callback raised")
    assert "long-poll callback for key 'k'" in caplog.text
    assert client.statistics()["callback_errors"] == 2
    assert client.thread.is_alive()


def test_wait_for_key_returns_the_value_or_names_the_missing_key(make_host, make_client):
    name, host = make_host()
    ray.get(host.notify.remote("present", {"x": 1}))
    client = make_client(name)
    assert client.wait_for_key("present", timeout=CATCH_UP_S) == {"x": 1}
    with pytest.raises(TimeoutError, match="long-poll key 'absent' got no value from host"):
        client.wait_for_key("absent", timeout=0.3)


def test_deleted_key_delivers_none(make_host, make_client):
    name, host = make_host()
    ray.get(host.notify.remote("k", "v"))
    client = make_client(name)
    rec = Recorder()
    client.subscribe("k", rec.callback("k"))
    wait_until(lambda: rec.last("k") == "v", CATCH_UP_S, "the value")
    ray.get(host.delete.remote("k"))
    wait_until(lambda: rec.calls["k"] == ["v", None], CATCH_UP_S, "None after delete")


def test_clients_catch_up_with_a_replacement_host(make_host, make_client):
    name, host = make_host()
    ray.get([host.notify.remote("routes", "old"), host.notify.remote("replicas:a", "old")])
    clients = [make_client(name) for _ in range(3)]
    rec = Recorder()
    for c, client in enumerate(clients):
        client.subscribe("routes", rec.callback(f"routes@{c}"))
        client.subscribe("replicas:a", rec.callback(f"replicas@{c}"))
    wait_until(lambda: all(rec.last(f"routes@{c}") == "old" for c in range(3)), CATCH_UP_S, "old values")

    ray.kill(host, no_restart=True)
    wait_until(lambda: all(c.statistics()["reconnects"] > 0 for c in clients), CATCH_UP_S,
               "every client to notice the host is gone")
    _, new_host = make_host(name)
    ray.get([new_host.notify.remote("routes", "new"), new_host.notify.remote("replicas:a", "new")])
    wait_until(lambda: all(rec.last(f"routes@{c}") == "new" and rec.last(f"replicas@{c}") == "new"
                           for c in range(3)), CATCH_UP_S, "values from the new host")
    assert all(c.thread.is_alive() for c in clients)


def test_client_continues_through_a_host_restart(make_host, make_client):
    name, host = make_host(max_restarts=1)
    ray.get(host.notify.remote("k", "before"))
    client = make_client(name)
    rec = Recorder()
    client.subscribe("k", rec.callback("k"))
    wait_until(lambda: rec.last("k") == "before", CATCH_UP_S, "the value before the restart")

    first_instance = ray.get(host.instance_id.remote(), timeout=10)
    ray.kill(host, no_restart=False)
    # The restarted instance starts empty and has a new instance id; the handle still works.
    # (ray.kill is asynchronous: notify only once the new instance answers.)
    wait_until(lambda: _try(lambda: ray.get(host.instance_id.remote(), timeout=5) != first_instance),
               CATCH_UP_S, "the host to restart")
    ray.get(host.notify.remote("k", "after"), timeout=10)
    wait_until(lambda: rec.last("k") == "after", CATCH_UP_S, "the value after the restart")


def test_stop_ends_the_thread_and_leaves_the_registry(make_host):
    name, host = make_host()
    client = LongPollClient.get_or_create(name, NAMESPACE)
    try:
        assert LongPollClient.get_or_create(name, NAMESPACE) is client
        client.subscribe("k", lambda value: None)  # a listen call is in flight
        ray.get(host.notify.remote("other", 1))
    finally:
        client.stop()
    client.thread.join(timeout=5)
    assert not client.thread.is_alive()
    client.stop()  # idempotent
    assert client not in LongPollClient.all_clients()
    with pytest.raises(RuntimeError, match="is stopped; use LongPollClient.get_or_create"):
        client.subscribe("k", lambda value: None)
    replacement = LongPollClient.get_or_create(name, NAMESPACE)
    try:
        assert replacement is not client
    finally:
        replacement.stop()


def test_timeout_sentinel_keeps_its_identity_through_ray(make_host):
    _, host = make_host(timeout_s=0.05)
    assert ray.get(host.listen_for_change.remote({"never": None}), timeout=10) is LONG_POLL_TIMEOUT


def _try(fn: Callable[[], bool]) -> bool:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the host is still restarting
        return False


def test_a_client_never_starts_ray_after_shutdown():
    """A long-poll thread that looked its host up after ``ray.shutdown()`` made Ray
    auto-initialize a new local instance (seen at the end of a test session)."""
    from tests.conftest import run_script

    out = run_script("""
import time, ray
from serveplane.long_poll import LongPollClient
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
client = LongPollClient("no-such-host", namespace="nowhere")
client.subscribe("k", lambda value: None)
ray.shutdown()
deadline = time.monotonic() + 5  # the client retries with back-off: give it several tries
while time.monotonic() < deadline:
    assert not ray.is_initialized(), "the long-poll thread started a new Ray instance"
    time.sleep(0.2)
print("still not initialized")
""", timeout=120)
    assert "still not initialized" in out
