"""Epoch fencing and blobs on the in-memory store (the same scenarios run against every real
store in tests/integration/kv/test_kv_conformance.py)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from serveplane.exceptions import CorruptCheckpointError, StaleEpochError
from serveplane.kv_store import CheckpointStore, MemoryKVStore
from tests.unit.kv.kv_helpers import InterleavingStore, run_threads


@pytest.fixture
def memory():
    return MemoryKVStore(f"memory://{uuid.uuid4().hex}")


def test_two_writers_the_older_epoch_is_refused(memory):
    a, b = CheckpointStore(memory, "ns"), CheckpointStore(memory, "ns")
    ea = a.acquire_epoch()
    a.write_checkpoint(ea, {"owner": "a", "n": 1})
    eb = b.acquire_epoch()
    assert (ea, eb) == (1, 2)
    assert b.read_checkpoint() == (eb, {"owner": "a", "n": 1})  # a's last good state, re-stamped
    with pytest.raises(StaleEpochError, match="^checkpoint write with epoch 1 refused: epoch 2 owns 'ns'$"):
        a.write_checkpoint(ea, {"owner": "a", "n": 2})
    b.write_checkpoint(eb, {"owner": "b"})
    with pytest.raises(StaleEpochError, match="epoch 1 refused: epoch 2 owns"):
        a.write_checkpoint(ea, {"owner": "a", "n": 3})
    assert a.read_checkpoint() == (eb, {"owner": "b"})
    assert a.current_epoch() == b.current_epoch() == 2


def test_a_fresh_namespace_reads_none_even_after_acquire(memory):
    store = CheckpointStore(memory, "ns")
    assert store.read_checkpoint() is None and store.current_epoch() == 0
    epoch = store.acquire_epoch()
    assert store.read_checkpoint() is None
    store.write_checkpoint(epoch, {})
    assert store.read_checkpoint() == (epoch, {})


@pytest.mark.parametrize("existing", [None, {"owner": "a", "n": 1}], ids=["no-state-yet", "state-exists"])
def test_a_successor_acquiring_between_read_and_cas_refuses_the_old_write(memory, existing):
    """A reads the checkpoint and the epoch key (both say epoch 1), then B acquires epoch 2,
    then A's compare-and-set runs: it must not land."""
    a_plain = CheckpointStore(memory, "ns")
    ea = a_plain.acquire_epoch()
    if existing is not None:
        a_plain.write_checkpoint(ea, existing)
    b = CheckpointStore(memory, "ns")
    racing = InterleavingStore(memory, a_plain.checkpoint_key, hook=b.acquire_epoch)
    a = CheckpointStore(racing, "ns")
    with pytest.raises(StaleEpochError, match="epoch 1 refused: epoch 2 owns 'ns'"):
        a.write_checkpoint(ea, {"owner": "a", "n": 2})
    assert racing.hook_ran
    expected = None if existing is None else (2, existing)
    assert b.read_checkpoint() == expected


def test_concurrent_acquires_take_distinct_epochs_and_the_last_one_owns(memory):
    taken: list[int] = []

    def acquire(_: int) -> None:
        for _ in range(10):
            taken.append(CheckpointStore(memory, "ns").acquire_epoch())

    CheckpointStore(memory, "ns").write_checkpoint(0, {"seed": True})
    run_threads(4, acquire)
    assert sorted(taken) == list(range(1, 41))
    assert CheckpointStore(memory, "ns").read_checkpoint() == (40, {"seed": True})


def test_an_acquire_that_finds_a_newer_stamp_is_refused(memory):
    store = CheckpointStore(memory, "ns")
    store.write_checkpoint(5, {"x": 1})  # written by an epoch the epoch key never saw
    with pytest.raises(StaleEpochError, match="epoch 1 refused: epoch 5 already owns 'ns'"):
        store.acquire_epoch()


def test_namespaces_are_independent(memory):
    a, b = CheckpointStore(memory, "one"), CheckpointStore(memory, "two")
    ea, eb = a.acquire_epoch(), b.acquire_epoch()
    a.write_checkpoint(ea, {"ns": "one"})
    b.write_checkpoint(eb, {"ns": "two"})
    assert (a.read_checkpoint(), b.read_checkpoint()) == ((1, {"ns": "one"}), (1, {"ns": "two"}))


def test_corrupt_primary_falls_back_to_backup_and_owner_may_overwrite_it(memory):
    store = CheckpointStore(memory, "ns")
    epoch = store.acquire_epoch()
    store.write_checkpoint(epoch, {"v": 1})
    memory.put(store.checkpoint_key, b"{ torn")
    assert store.read_checkpoint() == (epoch, {"v": 1})
    assert "checkpoint 'ns/checkpoint' is not valid JSON" in store.recovered_from_backup
    store.write_checkpoint(epoch, {"v": 2})  # the owner replaces unreadable bytes
    assert CheckpointStore(memory, "ns").read_checkpoint() == (epoch, {"v": 2})
    with pytest.raises(StaleEpochError):  # ...but a stale writer still may not
        memory.put(store.checkpoint_key, b"{ torn")
        store.write_checkpoint(epoch - 1, {"v": 0})


def test_both_copies_corrupt_is_refused_naming_the_primary(memory):
    store = CheckpointStore(memory, "ns")
    store.write_checkpoint(store.acquire_epoch(), {"v": 1})
    memory.put(store.checkpoint_key, b"garbage")
    memory.put(store.backup_key, b"garbage too")
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/checkpoint' is not valid JSON"):
        CheckpointStore(memory, "ns").read_checkpoint()
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/checkpoint'"):
        CheckpointStore(memory, "ns").acquire_epoch()


def test_repair_from_backup_keeps_the_fence(memory):
    store = CheckpointStore(memory, "ns")
    store.write_checkpoint(store.acquire_epoch(), {"v": 1})
    newer = CheckpointStore(memory, "ns")
    e2 = newer.acquire_epoch()  # re-stamps the primary only; the backup still says epoch 1
    memory.put(store.checkpoint_key, b"garbage")
    newer.repair_from_backup()
    assert newer.read_checkpoint() == (e2, {"v": 1}) and newer.recovered_from_backup is None
    newer.write_checkpoint(e2, {"v": 2})
    newer.repair_from_backup()  # a readable primary is left alone
    assert newer.read_checkpoint() == (e2, {"v": 2})


def test_blobs_are_stored_once_under_their_hash_and_verified(memory):
    store = CheckpointStore(memory, "ns")
    data = b"\x80cloudpickle\x00bytes"
    digest = store.put_blob(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put_blob(data) == digest
    assert memory.list("ns/blob/") == [f"ns/blob/{digest}"]
    assert store.get_blob(digest) == data
    memory.put(f"ns/blob/{digest}", b"bit rot")
    with pytest.raises(CorruptCheckpointError, match=f"blob 'ns/blob/{digest}' fails its content hash"):
        store.get_blob(digest)
    store.put_blob(data)  # putting the content again repairs the damaged copy
    assert store.get_blob(digest) == data
    with pytest.raises(CorruptCheckpointError, match="blob 'ns/blob/00ff' named by the checkpoint is missing"):
        store.get_blob("00ff")


def test_a_garbled_epoch_key_is_refused_naming_it(memory):
    memory.put("ns/epoch", b"seven")
    with pytest.raises(CorruptCheckpointError, match="epoch key 'ns/epoch' holds b'seven'; it must be a decimal"):
        CheckpointStore(memory, "ns").acquire_epoch()
