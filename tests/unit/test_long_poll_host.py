"""LongPollHost in pure asyncio: who is answered at once, who waits, who is woken."""

from __future__ import annotations

import asyncio
import pickle

import cloudpickle
import pytest

from serveplane.exceptions import InvalidConfigError
from serveplane.long_poll import LONG_POLL_TIMEOUT, LongPollHost, LongPollTimeout, UpdatedObject

# Long enough that a listener that should be woken never reaches it; the tests that want
# the timeout build a host with SHORT instead.
LONG = 10.0
SHORT = 0.05


def run(coro):
    return asyncio.run(coro)


async def settle() -> None:
    """Let pending listeners reach their ``await`` (a few loop turns, no wall-clock sleep)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_stale_keys_are_all_answered_at_once():
    async def scenario():
        host = LongPollHost(timeout_s=LONG)
        host.notify_changed("a", 1)
        host.notify_changed("b", 2)
        host.notify_changed("c", 3)
        current_c = host.get("c").snapshot_id
        result = await asyncio.wait_for(
            host.listen_for_change({"a": None, "b": "some-old-id", "c": current_c}), 1.0)
        assert set(result) == {"a", "b"}
        assert result["a"] == UpdatedObject(host.get("a").snapshot_id, 1)
        assert result["b"].value == 2

    run(scenario())


def test_up_to_date_listener_waits_and_is_woken_by_its_key_only():
    async def scenario():
        host = LongPollHost(timeout_s=LONG)
        host.notify_changed("mine", "v1")
        host.notify_changed("other", "x1")
        ids = {"mine": host.get("mine").snapshot_id}
        listener = asyncio.create_task(host.listen_for_change(ids))
        await settle()
        assert host.num_listeners() == 1

        host.notify_changed("other", "x2")
        await settle()
        assert not listener.done(), "a change to a key not listened on woke the listener"

        host.notify_changed("mine", "v2")
        result = await asyncio.wait_for(listener, 1.0)
        assert list(result) == ["mine"]
        assert result["mine"].value == "v2"
        assert result["mine"].snapshot_id != ids["mine"]
        assert host.num_listeners() == 0

    run(scenario())


def test_every_listener_of_a_key_is_woken():
    async def scenario():
        host = LongPollHost(timeout_s=LONG)
        host.notify_changed("k", 0)
        ids = {"k": host.get("k").snapshot_id}
        listeners = [asyncio.create_task(host.listen_for_change(ids)) for _ in range(5)]
        await settle()
        host.notify_changed("k", 1)
        results = await asyncio.wait_for(asyncio.gather(*listeners), 1.0)
        assert [r["k"].value for r in results] == [1] * 5

    run(scenario())


def test_timeout_returns_the_sentinel():
    async def scenario():
        host = LongPollHost(timeout_s=SHORT, jitter=0.2)
        host.notify_changed("k", 0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await asyncio.wait_for(host.listen_for_change({"k": host.get("k").snapshot_id}), 1.0)
        elapsed = loop.time() - started
        assert result is LONG_POLL_TIMEOUT
        assert SHORT * 0.8 - 0.01 <= elapsed < 0.5
        assert host.num_listeners() == 0

    run(scenario())


def test_unknown_key_is_waited_on_until_first_notified():
    async def scenario():
        host = LongPollHost(timeout_s=LONG)
        listener = asyncio.create_task(host.listen_for_change({"new": None}))
        await settle()
        assert not listener.done(), "a key the host never published was answered"
        host.notify_changed("new", "hello")
        result = await asyncio.wait_for(listener, 1.0)
        assert result["new"].value == "hello"

    run(scenario())


def test_unknown_key_times_out_when_never_notified():
    async def scenario():
        host = LongPollHost(timeout_s=SHORT, jitter=0.0)
        result = await asyncio.wait_for(host.listen_for_change({"never": None}), 1.0)
        assert result is LONG_POLL_TIMEOUT

    run(scenario())


def test_snapshot_ids_differ_between_host_instances():
    first, second = LongPollHost(), LongPollHost()
    first.notify_changed("k", "same value")
    second.notify_changed("k", "same value")
    assert first.get("k").snapshot_id != second.get("k").snapshot_id

    async def scenario():
        # A client that kept the dead host's id is answered at once by the new host.
        result = await asyncio.wait_for(
            second.listen_for_change({"k": first.get("k").snapshot_id}), 1.0)
        assert result["k"].value == "same value"

    run(scenario())


def test_each_notify_gives_a_new_snapshot_id():
    host = LongPollHost()
    seen = set()
    for _ in range(3):
        host.notify_changed("k", "unchanged")
        seen.add(host.get("k").snapshot_id)
    assert len(seen) == 3


def test_cancelled_listener_leaves_no_waiter():
    async def scenario():
        host = LongPollHost(timeout_s=LONG)
        listener = asyncio.create_task(host.listen_for_change({"k": None}))
        await settle()
        assert host.num_listeners() == 1
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener
        assert host.num_listeners() == 0
        host.notify_changed("k", 1)  # must not touch the cancelled waiter

    run(scenario())


def test_deleted_key_tells_listeners_none_and_is_unknown_again():
    async def scenario():
        host = LongPollHost(timeout_s=LONG)
        host.notify_changed("k", "v")
        seen_id = host.get("k").snapshot_id
        listener = asyncio.create_task(host.listen_for_change({"k": seen_id}))
        await settle()
        host.delete_key("k")
        result = await asyncio.wait_for(listener, 1.0)
        assert result["k"].value is None
        assert host.get("k") is None and host.keys() == []

        # A listener that never saw the key waits for it to come back.
        newcomer = asyncio.create_task(host.listen_for_change({"k": None}))
        await settle()
        assert not newcomer.done()
        host.notify_changed("k", "back")
        assert (await asyncio.wait_for(newcomer, 1.0))["k"].value == "back"

    run(scenario())


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads),
                                         (cloudpickle.dumps, cloudpickle.loads)],
                         ids=["pickle", "cloudpickle"])
def test_timeout_sentinel_keeps_its_identity_through_pickling(dumps, loads):
    assert loads(dumps(LONG_POLL_TIMEOUT)) is LONG_POLL_TIMEOUT
    assert LongPollTimeout() is LONG_POLL_TIMEOUT


@pytest.mark.parametrize("kwargs,match", [({"timeout_s": 0}, "timeout_s is 0; it must be > 0"),
                                          ({"jitter": 1.5}, r"jitter is 1.5; it must be in \[0, 1\)")],
                         ids=["zero-timeout", "jitter-too-big"])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        LongPollHost(**kwargs)


def test_repr_and_statistics_show_the_state():
    host = LongPollHost()
    host.notify_changed("a", 1)
    assert "keys: 1" in repr(host) and "listeners: 0" in repr(host)
    assert host.statistics()["snapshots_published"] == 1


def test_snapshot_ids_are_ordered_within_a_host_and_across_generations():
    from serveplane.long_poll import snapshot_at_least

    old, new = LongPollHost(generation=3), LongPollHost(generation=4)
    old.notify_changed("k", 1)
    first = old.get("k").snapshot_id
    old.notify_changed("k", 2)
    second = old.get("k").snapshot_id
    assert snapshot_at_least(second, first) and snapshot_at_least(first, first)
    assert not snapshot_at_least(first, second)
    assert not snapshot_at_least(None, first)
    new.notify_changed("k", 2)
    successor = new.get("k").snapshot_id
    assert snapshot_at_least(successor, second)       # a successor recovered every change
    assert not snapshot_at_least(second, successor)
    twin = LongPollHost(generation=3)
    twin.notify_changed("k", 2)
    twin.notify_changed("k", 3)
    assert not snapshot_at_least(twin.get("k").snapshot_id, first)  # same generation: unordered
    assert old.snapshot_ids(["k", "missing"]) == {"k": second}


def test_generation_must_be_a_non_negative_integer():
    with pytest.raises(InvalidConfigError, match="generation is -1"):
        LongPollHost(generation=-1)
