"""RecordStore on the in-memory store: epochs, fencing, copies, blobs and input checks.

The same scenarios run against every real store in tests/integration/kv/test_kv_conformance.py;
the undo log of stores without atomic transactions is in test_kv_change_log.py.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

from serveplane.exceptions import (
    CorruptCheckpointError,
    InvalidInputError,
    StaleEpochError,
    StateAuthenticationError,
)
from serveplane.kv_store import MemoryKVStore, RecordStore, StateKey
from tests.conftest import TEST_KEY
from tests.unit.kv.kv_helpers import CountingStore, FaultyStore, InjectedFault, InterleavingStore, run_threads


@pytest.fixture
def memory():
    return MemoryKVStore(f"memory://{uuid.uuid4().hex}")


def test_two_writers_the_older_epoch_is_refused_for_existing_and_new_names(memory):
    a, b = RecordStore(memory, "ns", key=TEST_KEY), RecordStore(memory, "ns", key=TEST_KEY)
    ea = a.acquire_epoch()
    a.write(ea, {"backend/x": {"owner": "a", "n": 1}})
    eb = b.acquire_epoch()
    assert (ea, eb) == (1, 2)
    assert b.read_all() == {"backend/x": {"owner": "a", "n": 1}}  # a's last good state
    with pytest.raises(StaleEpochError, match="^checkpoint write with epoch 1 refused: epoch 2 owns 'ns'$"):
        a.write(ea, {"backend/x": {"owner": "a", "n": 2}})
    with pytest.raises(StaleEpochError, match="^checkpoint write with epoch 1 refused: epoch 2 owns 'ns'$"):
        a.write(ea, {"endpoint/new": {"owner": "a"}})
    with pytest.raises(StaleEpochError, match="epoch 1 refused"):
        a.write(ea, {"backend/x": None})
    b.write(eb, {"backend/x": {"owner": "b"}})
    assert a.read_all() == {"backend/x": {"owner": "b"}}
    assert a.current_epoch() == b.current_epoch() == 2


def test_a_fresh_namespace_reads_empty_before_and_after_acquire(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    assert store.read_all() == {} and store.current_epoch() == 0
    epoch = store.acquire_epoch()
    assert store.read_all() == {} and store.current_epoch() == epoch == 1
    store.write(epoch, {"goal/g": {}})
    assert store.read_all() == {"goal/g": {}}


@pytest.mark.parametrize("name", ["backend/existing", "backend/new"], ids=["existing-name", "new-name"])
def test_a_successor_claiming_between_fence_and_write_refuses_the_old_write(memory, name):
    """The old writer is about to send its transaction when B claims the next epoch: the
    transaction's own check must refuse it, for a name that existed and for a new one."""
    first = RecordStore(memory, "ns", key=TEST_KEY)
    ea = first.acquire_epoch()
    first.write(ea, {"backend/existing": {"v": 1}})
    b = RecordStore(memory, "ns", key=TEST_KEY)
    racing = InterleavingStore(memory, hook=b.acquire_epoch, method="transact")
    with pytest.raises(StaleEpochError, match="epoch 1 refused: epoch 2 owns 'ns'"):
        RecordStore(racing, "ns", key=TEST_KEY).write(ea, {name: {"v": "zombie"}})
    assert racing.hook_ran
    assert b.read_all() == {"backend/existing": {"v": 1}}


def test_concurrent_acquires_take_distinct_contiguous_epochs(memory):
    taken: list[int] = []
    seed = RecordStore(memory, "ns", key=TEST_KEY)
    seed.write(0, {"backend/seed": {"v": True}})

    def acquire(_: int) -> None:
        for _ in range(10):
            taken.append(RecordStore(memory, "ns", key=TEST_KEY).acquire_epoch())

    run_threads(4, acquire)
    assert sorted(taken) == list(range(1, 41))
    assert seed.current_epoch() == 40 and memory.get("ns/epoch") == b"40"
    assert memory.list("ns/epochs/") == [f"ns/epochs/{n:020d}" for n in range(1, 41)]
    assert seed.read_all() == {"backend/seed": {"v": True}}


def test_acquire_epoch_does_not_touch_the_records(memory):
    """The work of a controller start is the same for 10 records as for 1000."""
    costs = []
    for n in (10, 1000):
        ns = f"ns{n}"
        RecordStore(memory, ns, key=TEST_KEY).write(0, {f"backend/b{i}": {"i": i} for i in range(n)})
        before = {k: memory.get(k) for k in memory.list(f"{ns}/records/")}
        counting = CountingStore(memory)
        RecordStore(counting, ns, key=TEST_KEY).acquire_epoch()
        costs.append(counting.calls)
        assert {k: memory.get(k) for k in memory.list(f"{ns}/records/")} == before
    assert costs[0] == costs[1]
    assert sum(costs[0].values()) <= 4  # list claims, claim, read and raise ns/epoch


def test_check_epoch_is_one_read_and_refuses_a_stale_epoch(memory):
    counting = CountingStore(memory)
    store = RecordStore(counting, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    counting.calls.clear()
    store.check_epoch(epoch)
    assert counting.calls == {"get": 1}
    RecordStore(memory, "ns", key=TEST_KEY).acquire_epoch()
    RecordStore(memory, "ns", key=TEST_KEY).acquire_epoch()
    with pytest.raises(StaleEpochError, match="^epoch 1 is stale: epoch 3 owns 'ns'$"):
        store.check_epoch(epoch)
    store.check_epoch(3)


def test_namespaces_are_independent(memory):
    a, b = RecordStore(memory, "one", key=TEST_KEY), RecordStore(memory, "two", key=TEST_KEY)
    ea = a.acquire_epoch()
    a.acquire_epoch()
    eb = b.acquire_epoch()
    a.write(2, {"backend/x": {"ns": "one"}})
    b.write(eb, {"backend/x": {"ns": "two"}})
    with pytest.raises(StaleEpochError):
        a.write(ea, {"backend/x": {}})
    assert (a.read_all(), b.read_all()) == ({"backend/x": {"ns": "one"}}, {"backend/x": {"ns": "two"}})
    assert (a.current_epoch(), b.current_epoch()) == (2, 1)


def test_a_write_is_one_transaction_that_fails_whole(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, {"backend/a": {"v": 1}, "backend/b": {"v": 1}})
    before = {k: memory.get(k) for k in memory.list("")}
    faulty = FaultyStore(memory, fail_at=1)
    with pytest.raises(InjectedFault):
        RecordStore(faulty, "ns", key=TEST_KEY).write(
            epoch, {"backend/a": {"v": 2}, "backend/b": None, "backend/c": {"v": 2}},
            blobs={hashlib.sha256(b"code").hexdigest(): b"code"})
    assert faulty.mutations == 2  # the whole change was one call; then its abandon record
    assert {k: memory.get(k) for k in memory.list("") if k != "ns/commit"} == {
        k: v for k, v in before.items() if k != "ns/commit"}
    assert RecordStore(memory, "ns", key=TEST_KEY).last_commit()["abandons"] is not None


def test_deleting_a_record_removes_it_and_its_copy(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, {"backend/a": {"v": 1}, "endpoint/e": {"v": 1}})
    store.write(epoch, {"backend/a": None, "goal/never-written": None})
    assert memory.list("ns/records/") == ["ns/records/endpoint/e"]
    assert memory.list("ns/backup/") == ["ns/backup/endpoint/e"]
    assert store.read_all() == {"endpoint/e": {"v": 1}}


def test_a_record_named_like_a_copy_keeps_its_own_key(memory):
    """Names may contain dots: 'endpoint/x.backup' is a record, not endpoint/x's copy."""
    store = RecordStore(memory, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, {"endpoint/x": {"v": "x"}, "endpoint/x.backup": {"v": "other"}})
    memory.put(store.key("endpoint/x"), b"torn")
    assert store.read_all() == {"endpoint/x": {"v": "x"}, "endpoint/x.backup": {"v": "other"}}


def test_corrupt_primary_is_served_from_its_copy_and_the_owner_rewrites_it(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    store.write(epoch, {"backend/a": {"v": 1}, "backend/b": {"v": 1}})
    memory.put(store.key("backend/a"), b"{ torn")
    assert store.read_all() == {"backend/a": {"v": 1}, "backend/b": {"v": 1}}
    assert len(store.recovered_from_backup) == 1
    assert "checkpoint 'ns/records/backend/a' is not valid JSON" in store.recovered_from_backup[0]
    store.write(epoch, {"backend/a": {"v": 2}})  # the owner replaces unreadable bytes
    fresh = RecordStore(memory, "ns", key=TEST_KEY)
    assert fresh.read_all()["backend/a"] == {"v": 2} and fresh.recovered_from_backup == []


def test_both_copies_corrupt_is_refused_naming_the_primary(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    store.write(store.acquire_epoch(), {"backend/a": {"v": 1}})
    memory.put(store.key("backend/a"), b"garbage")
    memory.put(store.backup_key("backend/a"), b"garbage too")
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/records/backend/a' is not valid JSON"):
        RecordStore(memory, "ns", key=TEST_KEY).read_all()
    memory.delete(store.backup_key("backend/a"))
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/records/backend/a' is not valid JSON"):
        RecordStore(memory, "ns", key=TEST_KEY).read_all()


def test_blobs_are_stored_once_under_their_hash_and_verified(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    data = b"\x80cloudpickle\x00bytes"
    digest = store.put_blob(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put_blob(data) == digest
    assert memory.list("ns/blob/") == [f"ns/blob/{digest}"] and store.blob_digests() == {digest}
    assert store.get_blob(digest) == data
    sealed = memory.get(f"ns/blob/{digest}")
    memory.put(f"ns/blob/{digest}", sealed[:-1] + b"X")
    with pytest.raises(CorruptCheckpointError, match=f"blob 'ns/blob/{digest}' fails its content hash"):
        store.get_blob(digest)
    memory.put(f"ns/blob/{digest}", data)  # unsealed: the previous format, or a planted blob
    with pytest.raises(StateAuthenticationError, match=f"blob 'ns/blob/{digest}' fails authentication: "
                                                       "it carries no MAC"):
        store.get_blob(digest)
    store.put_blob(data)  # putting the content again repairs the damaged copy
    assert store.get_blob(digest) == data
    # sealed by another key (or for another digest, or namespace): refused
    for other in (RecordStore(memory, "ns", key=StateKey("y" * 32, "other")),
                  RecordStore(memory, "ns2", key=TEST_KEY)):
        other_digest = other.put_blob(b"other code")
        memory.put(f"ns/blob/{other_digest}", memory.get(other.blob_key(other_digest)))
        with pytest.raises(StateAuthenticationError, match="fails authentication under state key"):
            store.get_blob(other_digest)
    with pytest.raises(CorruptCheckpointError, match="blob 'ns/blob/00ff' named by the checkpoint is missing"):
        store.get_blob("00ff")


def test_blobs_are_written_and_deleted_with_the_records_that_name_them(memory):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    old, new = b"old code", b"new code"
    old_hash, new_hash = hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()
    store.write(epoch, {"backend/a": {"code": old_hash}}, blobs={old_hash: old})
    store.write(epoch, {"backend/a": {"code": new_hash}}, blobs={new_hash: new, old_hash: None})
    assert store.blob_digests() == {new_hash} and store.get_blob(new_hash) == new
    RecordStore(memory, "ns", key=TEST_KEY).acquire_epoch()  # a successor
    with pytest.raises(StaleEpochError):  # blob writes are fenced with the records
        store.write(epoch, {}, blobs={new_hash: None})
    assert store.blob_digests() == {new_hash}


_CODE = b"code"
_CODE_HASH = hashlib.sha256(_CODE).hexdigest()


@pytest.mark.parametrize("epoch, records, blobs, match", [
    (1, {"backend/a": {"v": 2}, "backend/b": {"x": object()}}, None, "not JSON-serializable"),
    (1, {"backend/a": {"v": 2}, "backend/b": [1, 2]}, None,
     "record 'backend/b' is a list; a record is a dict of JSON values"),
    (1, {"backend/a": {"v": 2}, "": {}}, None, "record name '' is invalid"),
    (1, {"backend/a": {"v": 2}}, {_CODE_HASH: b"other bytes"}, "does not hash to its name"),
    (1, {"backend/a": {"v": 2}}, {"ab" * 10: None},
     "blob name 'abab.*' is invalid; blobs are named by the sha256"),
    (1, {"backend/a": {"v": 2}}, {_CODE_HASH: "text"}, "is a str; blobs must be bytes"),
    (-1, {}, None, "checkpoint epoch -1 is invalid"),
], ids=["not-json", "not-a-dict", "empty-name", "wrong-hash", "bad-blob-name", "str-blob", "negative-epoch"])
def test_bad_input_is_refused_before_anything_is_sent(memory, epoch, records, blobs, match):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    store.write(store.acquire_epoch(), {"backend/a": {"v": 1}})
    counting = CountingStore(memory)
    with pytest.raises(InvalidInputError, match=match):
        RecordStore(counting, "ns", key=TEST_KEY).write(epoch, records, blobs=blobs)
    assert counting.calls == {}
    assert store.read_all() == {"backend/a": {"v": 1}}


def test_the_informational_epoch_key_follows_the_highest_claim(memory):
    memory.put("ns/epoch", b"seven")  # nothing relies on it: garbage there is overwritten
    store = RecordStore(memory, "ns", key=TEST_KEY)
    assert store.acquire_epoch() == 1 and memory.get("ns/epoch") == b"1"
    memory.put("ns/epoch", b"9")  # never lowered, never trusted
    assert store.acquire_epoch() == 2 and memory.get("ns/epoch") == b"9"
    assert store.current_epoch() == 2


def test_a_foreign_key_among_the_claims_is_refused_naming_it(memory):
    memory.put("ns/epochs/latest", b"1")
    with pytest.raises(CorruptCheckpointError,
                       match="epoch claim key 'ns/epochs/latest' does not end in a 20-digit epoch"):
        RecordStore(memory, "ns", key=TEST_KEY).acquire_epoch()
