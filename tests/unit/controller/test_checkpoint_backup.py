from __future__ import annotations

import pytest

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store import MemoryKVStore, RecordStore
from tests.conftest import TEST_KEY


def test_corrupt_primary_falls_back_to_backup_and_both_corrupt_refuses():
    store = RecordStore(MemoryKVStore(), namespace="ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, {"endpoint/ep": {"route": "/ep"}, "backend/b": {"n": 1}})
    key = store.key("endpoint/ep")
    store.store.put(key, store.store.get(key).replace(b'"/ep"', b'"/xx"'))
    assert store.read_all() == {"endpoint/ep": {"route": "/ep"}, "backend/b": {"n": 1}}
    assert len(store.recovered_from_backup) == 1 and "fails authentication" in store.recovered_from_backup[0]
    # a restart reads the copy again (nothing re-stamps the primary); the owner's next write heals it
    fresh = RecordStore(store.store, namespace="ns", key=TEST_KEY)
    new_epoch = fresh.acquire_epoch()
    assert fresh.read_all()["endpoint/ep"] == {"route": "/ep"} and fresh.recovered_from_backup
    fresh.write(new_epoch, {"endpoint/ep": {"route": "/ep"}})
    assert fresh.read_all()["endpoint/ep"] == {"route": "/ep"} and fresh.recovered_from_backup == []
    store.store.put(key, b"garbage")
    store.store.put(store.backup_key("endpoint/ep"), b"garbage too")
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/records/endpoint/ep' is not valid JSON"):
        RecordStore(store.store, namespace="ns", key=TEST_KEY).read_all()


def test_skip_refused_leaves_out_records_whose_both_copies_fail_and_says_why():
    store = RecordStore(MemoryKVStore(), namespace="ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, {"endpoint/ep": {"route": "/ep"}, "backend/b": {"n": 1}})
    for key in (store.key("backend/b"), store.backup_key("backend/b")):
        store.store.put(key, store.store.get(key).replace(b'"n":1', b'"n":2'))
    with pytest.raises(CorruptCheckpointError, match="'ns/records/backend/b' fails authentication"):
        store.read_all()
    assert store.read_all(skip_refused=True) == {"endpoint/ep": {"route": "/ep"}}
    assert list(store.refused) == ["backend/b"] and "fails authentication" in store.refused["backend/b"]
