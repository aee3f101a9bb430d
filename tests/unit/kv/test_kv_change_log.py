"""RecordStore on a store without atomic transactions (the Ray GCS KV): the undo log.

``FaultyStore(memory, fail_at=k, atomic=False)`` applies a transaction one key at a time, as
the GCS store does, and fails the k-th single-key write: a crash of the writer at that point.
"""

from __future__ import annotations

import uuid

import pytest

from serveplane.exceptions import CorruptCheckpointError, StaleEpochError
from serveplane.kv_store import MemoryKVStore, RecordCodec, RecordStore, StateKey
from tests.conftest import TEST_KEY
from tests.unit.kv.kv_helpers import FaultyStore, InjectedFault, InterleavingStore, WriterCrash

BEFORE = {"backend/a": {"v": 1}, "backend/b": {"v": 1}, "endpoint/e": {"v": 1}}
CHANGE = {"backend/a": {"v": 2}, "backend/b": None, "endpoint/f": {"v": 2}}
AFTER = {"backend/a": {"v": 2}, "endpoint/e": {"v": 1}, "endpoint/f": {"v": 2}}


@pytest.fixture
def memory():
    return MemoryKVStore(f"memory://{uuid.uuid4().hex}")


def non_atomic(memory, fail_at=None):
    return FaultyStore(memory, fail_at=fail_at, atomic=False)


def keys(memory):
    return {k: memory.get(k) for k in memory.list("ns/") if not k.startswith(("ns/epoch", "ns/commit"))}


def test_a_change_cut_short_at_any_write_is_rolled_back_by_the_next_controller(memory):
    """The writer dies at the 1st, 2nd, ... single-key write of one change: it never
    returned success, so the next controller's acquire_epoch restores what the keys held
    before; unless the change's commit record (its last key) landed: then the change is
    whole, as on an atomic store whose writer died right after the commit, and it stays."""
    seen_half_applied = seen_committed = False
    for fail_at in range(1, 20):
        ns_store = MemoryKVStore(f"memory://{uuid.uuid4().hex}")
        owner = RecordStore(non_atomic(ns_store), "ns", key=TEST_KEY)
        epoch = owner.acquire_epoch()
        owner.write(epoch, BEFORE)
        faulty = FaultyStore(ns_store, fail_at=fail_at, atomic=False, crash=True)
        try:
            RecordStore(faulty, "ns", key=TEST_KEY).write(epoch, CHANGE)
        except WriterCrash:
            pass
        if not faulty.faulted:  # the change needed fewer writes: it completed
            assert RecordStore(ns_store, "ns", key=TEST_KEY).read_all() == AFTER and ns_store.get("ns/txn") is None
            break
        seen_half_applied |= RecordStore(ns_store, "ns", key=TEST_KEY).read_all() not in (BEFORE, AFTER)
        committed = RecordStore(ns_store, "ns", key=TEST_KEY).last_commit()["seq"] == 2
        seen_committed |= committed
        successor = RecordStore(non_atomic(ns_store), "ns", key=TEST_KEY)
        assert successor.acquire_epoch() == epoch + 1
        assert successor.read_all() == (AFTER if committed else BEFORE), f"fault at write {fail_at}"
        assert ns_store.get("ns/txn") is None
    else:
        pytest.fail("the change never completed")
    assert seen_half_applied and seen_committed, "no fault fell inside the change; the test proves nothing"


@pytest.mark.parametrize("lost_reply", [False, True], ids=["failed", "reply-lost"])
def test_a_write_that_raises_is_settled_by_its_writer_before_it_returns(memory, lost_reply):
    """Whatever single-key write of a change fails (before it applied, or after: its reply
    lost), the writer reads its commit record back: it returns only if the whole change is
    in the store, raises only if none of it is, and leaves no log either way."""
    seen = set()
    for fail_at in range(1, 20):
        ns_store = MemoryKVStore(f"memory://{uuid.uuid4().hex}")
        owner = RecordStore(non_atomic(ns_store), "ns", key=TEST_KEY)
        epoch = owner.acquire_epoch()
        owner.write(epoch, BEFORE)
        faulty = FaultyStore(ns_store, fail_at=fail_at, atomic=False, lost_reply=lost_reply)
        try:
            RecordStore(faulty, "ns", key=TEST_KEY).write(epoch, CHANGE)
            returned = True
        except InjectedFault:
            returned = False
        if not faulty.faulted:
            break
        seen.add(returned)
        assert RecordStore(ns_store, "ns", key=TEST_KEY).read_all() == (AFTER if returned else BEFORE), fail_at
        assert ns_store.get("ns/txn") is None
    assert seen == {True, False}  # a fault after the commit record landed: the change is whole


def test_a_controller_rolls_back_its_own_cut_short_change_before_it_answers(memory):
    """The write raised, so the controller commits nothing in memory: the store must not
    keep any of it either (the simulator found the opposite, completing it, diverging)."""
    owner = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    epoch = owner.acquire_epoch()
    owner.write(epoch, BEFORE)
    faulty = non_atomic(memory, fail_at=3)  # log, then the first key, then the fault
    store = RecordStore(faulty, "ns", key=TEST_KEY)
    with pytest.raises(InjectedFault):
        store.write(epoch, CHANGE)
    assert store.read_all() == BEFORE and memory.get("ns/txn") is None
    faulty.fail_at = None  # the store is back
    store.write(epoch, {"goal/g": {"backend": "a"}})
    assert store.read_all() == {**BEFORE, "goal/g": {"backend": "a"}}
    assert memory.get("ns/txn") is None


def test_a_roll_back_leaves_keys_written_since_and_never_deletes_a_blob(memory):
    import hashlib

    blob = b"model code"
    digest = hashlib.sha256(blob).hexdigest()
    owner = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    epoch = owner.acquire_epoch()
    owner.write(epoch, BEFORE)
    # the log, the 3 records and their copies, the blob, then the writer dies at its commit record
    faulty = FaultyStore(memory, fail_at=9, atomic=False, crash=True)
    with pytest.raises(WriterCrash):
        RecordStore(faulty, "ns", key=TEST_KEY).write(epoch, CHANGE, blobs={digest: blob})
    assert faulty.faulted and memory.get("ns/txn") is not None
    newer = RecordStore(memory, "ns", key=TEST_KEY)._record_writes(epoch, {"backend/a": {"v": 9}})
    memory.put("ns/records/backend/a", newer["ns/records/backend/a"])  # written since
    successor = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    successor.acquire_epoch()
    assert successor.read_all() == {**BEFORE, "backend/a": {"v": 9}}
    assert successor.blob_digests() == {digest}  # kept: the controller collects unnamed blobs


def test_a_zombies_leftover_log_is_discarded_not_replayed(memory):
    """Epoch 1 checks its fence, pauses; epoch 2 claims; epoch 1 logs its change and is
    refused. Epoch 2 dies before writing. Epoch 3 must not replay epoch 1's change."""
    zombie_plain = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    e1 = zombie_plain.acquire_epoch()
    zombie_plain.write(e1, BEFORE)
    successor = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    racing = InterleavingStore(non_atomic(memory), hook=successor.acquire_epoch, method="put")
    with pytest.raises(StaleEpochError, match="epoch 1 refused: epoch 2 owns 'ns'"):
        RecordStore(racing, "ns", key=TEST_KEY).write(e1, CHANGE)
    assert racing.hook_ran and memory.get("ns/txn") is not None  # the leftover
    third = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    assert third.acquire_epoch() == 3
    assert third.read_all() == BEFORE
    assert memory.get("ns/txn") is None


def test_a_stale_writer_leaves_no_log(memory):
    old = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    e1 = old.acquire_epoch()
    RecordStore(non_atomic(memory), "ns", key=TEST_KEY).acquire_epoch()
    for records in ({"backend/a": {"v": 1}}, {}):
        with pytest.raises(StaleEpochError,
                           match="^checkpoint write with epoch 1 refused: epoch 2 owns 'ns'$"):
            old.write(e1, records)
    assert keys(memory) == {}


def test_a_change_logged_just_before_a_successor_claims_is_refused_and_rolled_back(memory):
    """The old writer logged its change, then the successor claimed (rolling the log back),
    then the old writer's writes were refused: nothing of it lands, as it was told."""
    old = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    e1 = old.acquire_epoch()
    old.write(e1, BEFORE)
    successor = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    racing = InterleavingStore(non_atomic(memory), hook=successor.acquire_epoch, method="transact")
    with pytest.raises(StaleEpochError, match="epoch 1 refused: epoch 2 owns 'ns'"):
        RecordStore(racing, "ns", key=TEST_KEY).write(e1, CHANGE)
    assert racing.hook_ran and successor.read_all() == BEFORE
    assert memory.get("ns/txn") is None


def test_a_completed_change_leaves_only_live_keys(memory):
    store = RecordStore(non_atomic(memory), "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, BEFORE)
    store.write(epoch, {name: None for name in BEFORE})
    assert keys(memory) == {}


FOREIGN = {"before": {"other/records/x": None}, "after": {"other/records/x": None}}
PLANTED = {"before": {"ns/records/backend/a": None}, "after": {"ns/records/backend/a": None}}


@pytest.mark.parametrize("damage, match", [
    (lambda codec: b"{ torn", "change log 'ns/txn' is damaged \\(checkpoint 'ns/txn' is not valid JSON"),
    (lambda codec: codec.encode("txn", FOREIGN, 1),
     "change log 'ns/txn' names key 'other/records/x', outside its namespace"),
    (lambda codec: RecordCodec(StateKey("x" * 32, "attacker"), "ns").encode("txn", PLANTED, 1),
     "change log 'ns/txn' is damaged \\(checkpoint 'ns/txn' fails authentication"),
    (lambda codec: codec.encode("backend/a", PLANTED, 1),
     "change log 'ns/txn' is damaged \\(checkpoint 'ns/txn' fails authentication"),
], ids=["torn", "foreign-key", "planted-without-the-key", "a-record-moved-to-the-log"])
def test_a_damaged_log_is_refused_naming_its_key_and_the_fix(memory, damage, match):
    RecordStore(non_atomic(memory), "ns", key=TEST_KEY).acquire_epoch()
    memory.put("ns/txn", damage(RecordCodec(TEST_KEY, "ns")))
    with pytest.raises(CorruptCheckpointError, match=match + ".*Delete 'ns/txn' to start without it"):
        RecordStore(non_atomic(memory), "ns", key=TEST_KEY).acquire_epoch()
