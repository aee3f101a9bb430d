"""One conformance suite for every key-value store: memory, Ray GCS KV, SQLite and Redis,
and for ``RecordStore`` on each of them.

Real stores: the GCS KV of the session's Ray, a SQLite file, a redis-server on a free
loopback port. More store-specific faults (SQLite locked, unwritable or aborting midway, Redis
stopped and restarted, Ray not initialized, transactions across processes) are in
tests/unit/kv/test_kv_local_stores.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import sqlite3

import pytest
import ray

from serveplane.exceptions import (
    CorruptCheckpointError,
    InvalidInputError,
    KVStoreUnavailableError,
    StaleEpochError,
)
from serveplane.kv_store import RecordStore, SQLiteKVStore, open_store
from tests.conftest import TEST_KEY
from tests.unit.kv.kv_helpers import (
    CountingStore,
    FaultyStore,
    InjectedFault,
    InterleavingStore,
    cas_increment,
    run_threads,
    transact_increment,
)

ALL_BYTES = bytes(range(256))


def test_get_put_overwrite_delete(store):
    assert store.get("a") is None
    store.put("a", b"1")
    store.put("a", b"2")
    assert store.get("a") == b"2"
    store.delete("a")
    store.delete("a")  # deleting what is gone is a no-op
    store.delete("never-written")
    assert store.get("a") is None


@pytest.mark.parametrize("value", [b"", ALL_BYTES, ALL_BYTES * 4096, b"\x00" * 10],
                         ids=["empty", "every-byte", "1-mib", "nuls"])
def test_values_come_back_byte_for_byte(store, value):
    store.put("v", value)
    assert store.get("v") == value
    assert store.compare_and_set("v", value, value[::-1])
    assert store.get("v") == value[::-1]


def test_keys_with_slashes_unicode_and_glob_or_sql_characters(store):
    keys = ["serveplane/ns/records/backend/a", "serveplane/ns/records/endpoint/b", "serveplane/ns/epoch",
            "ünï/cødé/键", "glob*?[x]\\", "sql%_like", "with space", "colon:key"]
    for i, key in enumerate(keys):
        store.put(key, str(i).encode())
    for i, key in enumerate(keys):
        assert store.get(key) == str(i).encode()
    assert store.list("") == sorted(keys)
    assert store.list("serveplane/ns/records/") == keys[:2]
    assert store.list("serveplane/ns/") == sorted(keys[:3])
    assert store.list("glob*") == ["glob*?[x]\\"] and store.list("glob") == ["glob*?[x]\\"]
    assert store.list("sql%") == ["sql%_like"] and store.list("sql_") == []
    assert store.list("[") == [] and store.list("*") == [] and store.list("%") == []
    assert store.list("ünï/") == ["ünï/cødé/键"]


def test_list_returns_sorted_keys_with_the_prefix_only(store):
    for key in ["p/3", "p/1", "p/10", "p/2", "q/1", "p"]:
        store.put(key, b"x")
    assert store.list("p/") == ["p/1", "p/10", "p/2", "p/3"]
    assert store.list("p") == ["p", "p/1", "p/10", "p/2", "p/3"]
    assert store.list("nothing/") == []


def test_compare_and_set_semantics(store):
    assert store.compare_and_set("k", None, b"1")  # absent -> create
    assert not store.compare_and_set("k", None, b"2")  # exists already
    assert not store.compare_and_set("k", b"0", b"2")  # wrong expectation
    assert not store.compare_and_set("k", b"", b"2")  # empty is not absent
    assert store.get("k") == b"1"
    assert store.compare_and_set("k", b"1", b"2")
    assert store.get("k") == b"2"
    assert not store.compare_and_set("gone", b"2", b"3")  # expected a value, key absent
    assert store.get("gone") is None
    store.put("e", b"")
    assert not store.compare_and_set("e", None, b"x")  # empty value is present
    assert store.compare_and_set("e", b"", b"x")
    store.delete("k")
    assert store.compare_and_set("k", None, b"again")


def test_bad_keys_and_values_are_refused(store):
    with pytest.raises(InvalidInputError, match="kv key '' is invalid"):
        store.put("", b"v")
    with pytest.raises(InvalidInputError, match="value for kv key 'k' is a str; values must be bytes"):
        store.compare_and_set("k", None, "v")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="value for kv key 'k' is a str; values must be bytes"):
        store.compare_and_set("k", "expected", b"v")  # type: ignore[arg-type]
    assert store.get("k") is None


def test_concurrent_cas_writers_never_lose_an_increment(store):
    """Threads CAS-increment one counter; the final value is exactly the number of wins.
    (For the GCS store this is the in-process guarantee its docstring promises.)"""
    wins: list[int] = []
    run_threads(4, lambda i: wins.append(cas_increment(store, "counter", 25)), timeout_s=60)
    assert sum(wins) == 100
    assert store.get("counter") == b"100"


def test_a_store_reopens_from_its_pickle_in_a_ray_worker(store, ray_session):
    @ray.remote(num_cpus=0)
    def in_worker(pickled_store, url):
        before = pickled_store.get("from-driver")
        pickled_store.put("from-worker", b"pickled")
        open_store(url).put("from-worker-url", b"reopened")
        return before

    store.put("from-driver", b"d")
    seen = ray.get(in_worker.remote(store, store.url), timeout=60)
    if store.url.startswith("memory://"):
        # by design a memory store is per process: the worker had its own, empty dict
        assert seen is None and store.get("from-worker") is None
    else:
        assert seen == b"d"
        assert (store.get("from-worker"), store.get("from-worker-url")) == (b"pickled", b"reopened")


@pytest.mark.parametrize("store", ["ray", "sqlite", "redis"], indirect=True)  # memory is per process
def test_create_if_absent_has_one_winner_across_processes(store, ray_session):
    """The one CAS the GCS store makes atomic across processes: creating an absent key."""

    @ray.remote(num_cpus=0)
    def try_create(s, who):
        return s.compare_and_set("leader", None, who.encode())

    results = ray.get([try_create.remote(store, f"w{i}") for i in range(6)], timeout=60)
    assert results.count(True) == 1
    assert store.get("leader") == f"w{results.index(True)}".encode()


# -- transact -----------------------------------------------------------------------------------
def snapshot(store):
    return {k: store.get(k) for k in store.list("")}


def test_transact_applies_every_write_when_every_check_holds(store):
    store.put("k", b"1")
    store.put("gone", b"x")
    store.put("empty", b"")
    assert store.transact({"k": b"1", "absent": None, "empty": b""},
                          {"k": b"2", "new": ALL_BYTES, "gone": None, "never-written": None}) is True
    assert snapshot(store) == {"k": b"2", "new": ALL_BYTES, "empty": b""}
    assert store.transact({}, {"empty": None}) is True  # no checks: just the writes
    assert store.transact({"k": b"2"}, {}) is True  # no writes: just the checks
    assert snapshot(store) == {"k": b"2", "new": ALL_BYTES}


@pytest.mark.parametrize("checks", [
    {"k": None},
    {"k": b"0"},
    {"missing": b"1"},
    {"e": None},
    {"missing": b""},
    {"k": b"1", "e": b"", "missing": b"x"},
], ids=["present-expected-absent", "wrong-value", "absent-expected-value", "empty-is-present",
        "absent-is-not-empty", "last-of-three-fails"])
def test_a_failed_check_changes_nothing(store, checks):
    store.put("k", b"1")
    store.put("e", b"")
    before = snapshot(store)
    assert store.transact(checks, {"k": b"2", "new": b"n", "e": None}) is False
    assert snapshot(store) == before


@pytest.mark.parametrize("checks, writes, match", [
    ({}, {"ok": b"1", "": b"2"}, "kv key '' is invalid"),
    ({}, {"ok": b"1", "s": "text"}, "value for kv key 's' is a str; values must be bytes"),
    ({"": None}, {"ok": b"1"}, "kv key '' is invalid"),
    ({"c": "text"}, {"ok": b"1"}, "value for kv key 'c' is a str"),
], ids=["empty-write-key", "str-write-value", "empty-check-key", "str-check-value"])
def test_transact_refuses_bad_keys_and_values_before_sending_anything(store, checks, writes, match):
    with pytest.raises(InvalidInputError, match=match):
        store.transact(checks, writes)
    assert snapshot(store) == {}


def test_a_large_transaction_lands_and_leaves_whole(store):
    keys = {f"big/{i:04d}": bytes([i % 256]) * 1024 for i in range(300)}
    assert store.transact({"big/0000": None}, keys)
    assert store.list("big/") == sorted(keys) and store.get("big/0299") == keys["big/0299"]
    assert store.transact({"big/0000": keys["big/0000"]}, dict.fromkeys(keys))
    assert store.list("big/") == []


def test_concurrent_transactions_never_interleave(store):
    """Threads raise twin counters by transact (checks on both, writes to both and to a log
    key): every win is counted once and the twins stay equal. (For the GCS store this is the
    in-process guarantee its docstring promises.)"""
    run_threads(4, lambda i: transact_increment(store, 25, f"t{i}"), timeout_s=60)
    assert store.get("a") == store.get("b") == b"100"
    assert len(store.list("log/")) == 100


@contextlib.contextmanager
def backing_service_down(store, request, monkeypatch):
    """Make ``store``'s backing service fail; yield a store object that sees it down."""
    if store.url.startswith("sqlite://"):
        holder = sqlite3.connect(store.path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # held past the busy timeout reads as "down"
        impatient = SQLiteKVStore(store.url, busy_timeout_s=0.1)
        try:
            yield impatient
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            impatient.close()
    elif store.url.startswith("redis://"):
        server = request.getfixturevalue("redis_server")
        server.stop()
        try:
            yield store
        finally:
            server.start()
    else:
        from ray.experimental import internal_kv

        def unreachable(*args, **kwargs):
            raise ConnectionError("GCS unreachable")

        with monkeypatch.context() as patch:
            for name in ("_internal_kv_get", "_internal_kv_put", "_internal_kv_del"):
                patch.setattr(internal_kv, name, unreachable)
            yield store


@pytest.mark.parametrize("store", ["ray", "sqlite", "redis"], indirect=True)  # memory has no service
def test_transact_on_a_down_store_is_unavailable_and_changes_nothing(store, request, monkeypatch):
    store.put("a", b"1")
    with backing_service_down(store, request, monkeypatch) as down:
        expected = f"^key-value store {re.escape(store.url)} is unavailable: transact 'a', 'b' failed"
        with pytest.raises(KVStoreUnavailableError, match=expected):
            down.transact({"a": b"1"}, {"a": b"2", "b": b"2"})
    assert (store.get("a"), store.get("b")) == (b"1", None)


# -- RecordStore on every store -------------------------------------------------------------
BEFORE = {"backend/a": {"v": 1}, "backend/b": {"v": 1}, "endpoint/e": {"v": 1}}
CHANGE = {"backend/a": {"v": 2}, "backend/b": None, "endpoint/f": {"v": 2}}
AFTER = {"backend/a": {"v": 2}, "endpoint/e": {"v": 1}, "endpoint/f": {"v": 2}}
CODE = b"code"
CODE_HASH = hashlib.sha256(CODE).hexdigest()


def test_record_fencing_refuses_a_stale_writer_for_existing_and_new_names(store):
    a, b = RecordStore(store, "ns", key=TEST_KEY), RecordStore(store, "ns", key=TEST_KEY)
    ea = a.acquire_epoch()
    a.write(ea, {"backend/x": {"owner": "a"}})
    eb = b.acquire_epoch()
    assert eb == ea + 1
    for records in ({"backend/x": {"owner": "a", "n": 2}}, {"backend/y": {"owner": "a"}}, {"backend/x": None}):
        with pytest.raises(StaleEpochError,
                           match=f"^checkpoint write with epoch {ea} refused: epoch {eb} owns 'ns'$"):
            a.write(ea, records)
    with pytest.raises(StaleEpochError, match=f"^epoch {ea} is stale: epoch {eb} owns 'ns'$"):
        a.check_epoch(ea)
    assert b.read_all() == {"backend/x": {"owner": "a"}}  # nothing the zombie wrote survives
    b.write(eb, {"backend/x": None, "backend/z": {"owner": "b"}})
    assert a.read_all() == {"backend/z": {"owner": "b"}}


@pytest.mark.parametrize("name", ["backend/a", "backend/new"], ids=["existing-name", "new-name"])
def test_a_successor_claiming_just_before_the_write_fences_the_old_writer(store, name):
    old = RecordStore(store, "ns", key=TEST_KEY)
    epoch = old.acquire_epoch()
    old.write(epoch, BEFORE)
    successor = RecordStore(store, "ns", key=TEST_KEY)
    racing = InterleavingStore(store, hook=successor.acquire_epoch, method="transact")
    with pytest.raises(StaleEpochError, match=f"epoch {epoch} refused: epoch {epoch + 1} owns"):
        RecordStore(racing, "ns", key=TEST_KEY).write(epoch, {name: {"v": "zombie"}})
    assert racing.hook_ran
    assert successor.read_all() == BEFORE  # on the GCS store: rolled back from the undo log


def test_concurrent_acquires_in_threads_take_distinct_epochs(store):
    taken: list[int] = []
    run_threads(4, lambda i: taken.extend(RecordStore(store, "ns", key=TEST_KEY).acquire_epoch() for _ in range(5)),
                timeout_s=60)
    assert sorted(taken) == list(range(1, 21))


@pytest.mark.parametrize("store", ["ray", "sqlite", "redis"], indirect=True)  # memory is per process
def test_controllers_in_other_processes_take_distinct_epochs(store, ray_session):
    @ray.remote(num_cpus=0)
    def acquire(s):
        return [RecordStore(s, "ns", key=TEST_KEY).acquire_epoch() for _ in range(5)]

    taken = ray.get([acquire.remote(store) for _ in range(4)], timeout=120)
    assert sorted(itertools.chain(*taken)) == list(range(1, 21))
    assert RecordStore(store, "ns", key=TEST_KEY).current_epoch() == 20


def test_acquire_epoch_costs_the_same_for_10_and_1000_records(store):
    costs = []
    for n in (10, 1000):
        ns = f"ns{n}"
        RecordStore(store, ns, key=TEST_KEY).write(0, {f"backend/b{i}": {"i": i} for i in range(n)})
        counting = CountingStore(store)
        RecordStore(counting, ns, key=TEST_KEY).acquire_epoch()
        costs.append(dict(counting.calls))
        assert not counting.calls.keys() & {"put", "delete", "transact"}  # it rewrites nothing
    assert costs[0] == costs[1]


def test_deleted_records_and_blobs_leave_no_key_behind(store):
    records = RecordStore(store, "ns", key=TEST_KEY)
    epoch = records.acquire_epoch()
    records.write(epoch, BEFORE, blobs={CODE_HASH: CODE})
    records.write(epoch, CHANGE)
    records.write(epoch, dict.fromkeys(AFTER), blobs={CODE_HASH: None})
    assert records.read_all() == {} and records.blob_digests() == set()
    assert store.list("ns/") == ["ns/commit", "ns/epoch", "ns/epochs/00000000000000000001"]


def test_a_record_write_lands_whole_or_not_at_all_wherever_it_fails(store):
    """Fail the 1st, 2nd, ... store mutation of one change. Where transactions are atomic the
    change is one mutation; on the GCS store its keys are written one by one. Either way the
    writer reads its commit record back before it answers: it returns only if the whole
    change landed and raises only if none of it did (rolled back from the undo log first)."""
    outcomes = set()
    for fail_at in itertools.count(1):
        ns = f"fault{fail_at}"
        owner = RecordStore(store, ns, key=TEST_KEY)
        epoch = owner.acquire_epoch()
        owner.write(epoch, BEFORE)
        faulty = FaultyStore(store, fail_at)
        try:
            RecordStore(faulty, ns, key=TEST_KEY).write(epoch, CHANGE, blobs={CODE_HASH: CODE})
            returned = True
        except InjectedFault:
            returned = False
        if not faulty.faulted:
            assert owner.read_all() == AFTER and owner.blob_digests() == {CODE_HASH}
            break
        outcomes.add(returned)
        assert owner.read_all() == (AFTER if returned else BEFORE), f"fault at mutation {fail_at}"
        assert store.get(f"{ns}/txn") is None
        successor = RecordStore(store, ns, key=TEST_KEY)
        successor.acquire_epoch()
        assert successor.read_all() == (AFTER if returned else BEFORE), f"fault at mutation {fail_at}"
        assert successor.blob_digests() <= {CODE_HASH}  # a roll-back never deletes a blob
    # atomic: one transaction; else: the log, each record and its copy, the blob, the commit
    # record, clearing the log (a fault there comes after the commit: written)
    mutations = 1 if store.atomic_transactions else 1 + 2 * len(CHANGE) + 1 + 1 + 1
    assert fail_at == mutations + 1
    assert outcomes == ({False} if store.atomic_transactions else {False, True})


def test_a_corrupt_record_is_served_from_its_copy_and_both_corrupt_is_refused(store):
    records = RecordStore(store, "ns", key=TEST_KEY)
    epoch = records.acquire_epoch()
    records.write(epoch, BEFORE)
    store.put(records.key("backend/a"), store.get(records.key("backend/a")).replace(b'"v":1', b'"v":9'))
    assert records.read_all() == BEFORE
    assert "checkpoint 'ns/records/backend/a' fails authentication" in records.recovered_from_backup[0]
    store.put(records.backup_key("backend/a"), b"garbage")
    with pytest.raises(CorruptCheckpointError, match="checkpoint 'ns/records/backend/a' fails authentication"):
        RecordStore(store, "ns", key=TEST_KEY).read_all()


def test_blobs_round_trip_once(store):
    records = RecordStore(store, "ns", key=TEST_KEY)
    digest = records.put_blob(ALL_BYTES)
    assert records.put_blob(ALL_BYTES) == digest
    assert records.get_blob(digest) == ALL_BYTES
    assert store.list("ns/blob/") == [f"ns/blob/{digest}"] and records.blob_digests() == {digest}
