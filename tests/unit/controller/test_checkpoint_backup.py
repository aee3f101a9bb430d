from __future__ import annotations

import pytest

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store import CheckpointStore, MemoryKVStore


def test_corrupt_primary_falls_back_to_backup_and_both_corrupt_refuses():
    store = CheckpointStore(MemoryKVStore(), namespace="ns")
    epoch = store.acquire_epoch()
    store.write_checkpoint(epoch, {"endpoints": {"ep": 1}})
    store.store.put(store.checkpoint_key, b'{"schema_version": 1, "epoch": 1, "checksum": "x", "payload": {}}')
    assert store.read_checkpoint() == (epoch, {"endpoints": {"ep": 1}})
    assert "fails its checksum" in store.recovered_from_backup
    # a restart re-stamps from the backup, so the primary is whole again
    fresh = CheckpointStore(store.store, namespace="ns")
    new_epoch = fresh.acquire_epoch()
    assert fresh.read_checkpoint() == (new_epoch, {"endpoints": {"ep": 1}})
    store.store.put(store.checkpoint_key, b"garbage")
    store.store.put(store.backup_key, b"garbage too")
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/checkpoint' is not valid JSON"):
        CheckpointStore(store.store, namespace="ns").read_checkpoint()
