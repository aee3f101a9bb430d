"""The high-water mark: a store put back to an older snapshot (commit record included) is
refused at the next controller start, naming both sequences; a store that is current, or a
mark forgotten on purpose, starts."""

from __future__ import annotations

import uuid

import pytest

from serveplane.kv_store import MemoryKVStore, RecordStore
from serveplane.kv_store.high_water import HighWaterMark, StoreRolledBackError
from tests.conftest import TEST_KEY


@pytest.fixture
def world():
    store = MemoryKVStore(f"memory://{uuid.uuid4().hex}")
    marks = MemoryKVStore(f"memory://{uuid.uuid4().hex}")
    return store, HighWaterMark(marks, "sqlite:///state.db", "ns")


def snapshot(store):
    return {k: store.get(k) for k in store.list("")}


def restore(store, snap):
    for key in store.list(""):
        store.delete(key)
    for key, value in snap.items():
        store.put(key, value)


def test_an_older_snapshot_of_the_whole_store_is_refused_naming_both_sequences(world):
    store, mark = world
    writer = RecordStore(store, "ns", key=TEST_KEY, high_water=mark)
    epoch = writer.acquire_epoch()
    writer.write(epoch, {"backend/a": {"v": 1}})
    old = snapshot(store)  # sequence 1
    writer.write(epoch, {"backend/a": {"v": 2}})
    writer.write(epoch, {"endpoint/e": None, "backend/b": {"v": 1}})  # sequence 3
    assert mark.read() == (epoch, 3)
    restore(store, old)
    with pytest.raises(StoreRolledBackError, match=r"its last authenticated change is sequence 1 "
                       r"\(epoch 1\), but this cluster saw sequence 3 \(epoch 1\) committed"):
        RecordStore(store, "ns", key=TEST_KEY, high_water=mark).acquire_epoch()
    assert RecordStore(store, "ns", key=TEST_KEY).current_epoch() == epoch  # nothing claimed
    mark.forget()
    assert RecordStore(store, "ns", key=TEST_KEY, high_water=mark).acquire_epoch() == epoch + 1


def test_a_current_store_starts_and_the_mark_never_goes_down(world):
    store, mark = world
    writer = RecordStore(store, "ns", key=TEST_KEY, high_water=mark)
    epoch = writer.acquire_epoch()
    for v in range(3):
        writer.write(epoch, {"backend/a": {"v": v}})
    successor = RecordStore(store, "ns", key=TEST_KEY, high_water=mark)
    assert successor.acquire_epoch() == epoch + 1
    mark.raise_to(epoch, 1)
    assert mark.read() == (epoch, 3)


def test_a_store_wiped_behind_the_mark_is_refused(world):
    store, mark = world
    writer = RecordStore(store, "ns", key=TEST_KEY, high_water=mark)
    writer.write(writer.acquire_epoch(), {"backend/a": {"v": 1}})
    restore(store, {})
    with pytest.raises(StoreRolledBackError, match="sequence 0"):
        RecordStore(store, "ns", key=TEST_KEY, high_water=mark).acquire_epoch()
