from __future__ import annotations

import pytest

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store import MemoryKVStore, RecordStore


def test_corrupt_primary_falls_back_to_backup_and_both_corrupt_refuses():
    store = RecordStore(MemoryKVStore(), namespace="ns")
    epoch = store.acquire_epoch()
    store.write(epoch, {"endpoint/ep": {"route": "/ep"}, "backend/b": {"n": 1}})
    key = store.key("endpoint/ep")
    store.store.put(key, b'{"schema_version": 1, "epoch": 1, "checksum": "x", "payload": {}}')
    assert store.read_all() == {"endpoint/ep": {"route": "/ep"}, "backend/b": {"n": 1}}
    assert len(store.recovered_from_backup) == 1 and "fails its checksum" in store.recovered_from_backup[0]
    # a restart reads the copy again (nothing re-stamps the primary); the owner's next write heals it
    fresh = RecordStore(store.store, namespace="ns")
    new_epoch = fresh.acquire_epoch()
    assert fresh.read_all()["endpoint/ep"] == {"route": "/ep"} and fresh.recovered_from_backup
    fresh.write(new_epoch, {"endpoint/ep": {"route": "/ep"}})
    assert fresh.read_all()["endpoint/ep"] == {"route": "/ep"} and fresh.recovered_from_backup == []
    store.store.put(key, b"garbage")
    store.store.put(store.backup_key("endpoint/ep"), b"garbage too")
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/records/endpoint/ep' is not valid JSON"):
        RecordStore(store.store, namespace="ns").read_all()
