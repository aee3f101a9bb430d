"""``migrate_namespace``: the previous format's state, authenticated once on request; never
anything damaged, and never anything another key signed."""

from __future__ import annotations

import json
import uuid

import pytest

from serveplane.exceptions import StateAuthenticationError
from serveplane.kv_store import MemoryKVStore, RecordStore, StateKey
from serveplane.kv_store.migrate import migrate_namespace, plan_migration
from tests.attacker import plain_document, to_previous_format
from tests.conftest import TEST_KEY
from tests.unit.kv.kv_helpers import FaultyStore, WriterCrash

CODE = b"\x80\x05code"
CODE_HASH = "e55a808b7ed774ee7c0107836acb448ac83a661fe33eb16f1030ce08e7c5c47b"  # sha256(CODE), checked below
RECORDS = {"backend/m": {"code_hash": CODE_HASH}, "endpoint/ep": {"route": "/ep"}, "goal/g": {"done": False}}


@pytest.fixture
def memory():
    return MemoryKVStore(f"memory://{uuid.uuid4().hex}")


def previous_format_state(memory, records=RECORDS):
    store = RecordStore(memory, "ns", key=TEST_KEY)
    epoch = store.acquire_epoch()
    digest = store.put_blob(CODE)
    assert digest == CODE_HASH
    store.write(epoch, records)
    to_previous_format(memory, "ns")
    return store, digest


def every_item(memory):
    """What an operator names after checking the dry run: the namespace has epoch claims."""
    return [item.id for item in plan_migration(memory, "ns", TEST_KEY).items]


def test_the_previous_format_is_refused_until_migrated_then_loads(memory):
    store, digest = previous_format_state(memory)
    assert store.read_all(skip_refused=True) == {} and set(store.refused) == set(RECORDS)
    with pytest.raises(StateAuthenticationError, match="carries no MAC"):
        store.get_blob(digest)
    plan = plan_migration(memory, "ns", TEST_KEY, approved=every_item(memory))
    assert set(plan.records) == set(RECORDS) and set(plan.blobs) == {digest} and plan.epoch is None
    assert store.current_epoch() == 1  # planning claims nothing
    assert plan.guarded and "epoch claims" in plan.guarded
    report = migrate_namespace(memory, "ns", TEST_KEY, approved=every_item(memory))
    assert report.epoch == 2 and set(report.records) == set(RECORDS) and report.refused == {}
    assert RecordStore(memory, "ns", key=TEST_KEY).read_all() == RECORDS and store.get_blob(digest) == CODE
    again = migrate_namespace(memory, "ns", TEST_KEY, approved=every_item(memory))
    assert not again.needed and again.already == len(RECORDS) + 1 and again.epoch is None
    assert store.current_epoch() == 2  # nothing to migrate: the running controller keeps its epoch


def test_damaged_items_are_left_alone_and_reported(memory):
    store, digest = previous_format_state(memory)
    for key in (store.key("endpoint/ep"), store.backup_key("endpoint/ep")):
        memory.put(key, memory.get(key).replace(b'"/ep"', b'"/xx"'))  # checksum no longer holds
    memory.put(f"ns/blob/{'0' * 64}", b"bytes that do not hash to their name")
    report = migrate_namespace(memory, "ns", TEST_KEY, approved=every_item(memory))
    assert set(report.records) == {"backend/m", "goal/g"}
    assert set(report.refused) == {"ns/records/endpoint/ep", f"ns/blob/{'0' * 64}"}
    assert "fails its checksum" in report.refused["ns/records/endpoint/ep"]
    assert RecordStore(memory, "ns", key=TEST_KEY).read_all(skip_refused=True) == {
        "backend/m": RECORDS["backend/m"], "goal/g": RECORDS["goal/g"]}


def test_a_copy_serves_when_the_primary_is_damaged(memory):
    store, _ = previous_format_state(memory)
    memory.put(store.key("backend/m"), b"torn")
    report = migrate_namespace(memory, "ns", TEST_KEY, approved=every_item(memory))
    assert report.refused == {} and RecordStore(memory, "ns", key=TEST_KEY).read_all() == RECORDS


def test_state_signed_by_another_key_is_never_re_signed(memory):
    other = StateKey("another-key-0123456789abcdefghijklm", "elsewhere")
    theirs = RecordStore(memory, "ns", key=other)
    theirs.write(theirs.acquire_epoch(), {"backend/x": {"v": 1}}, {})
    digest = theirs.put_blob(CODE)
    report = migrate_namespace(memory, "ns", TEST_KEY)
    assert not report.needed and set(report.refused) == {"ns/records/backend/x", f"ns/blob/{digest}"}
    assert all("fails authentication under state key" in why for why in report.refused.values())
    assert theirs.read_all() == {"backend/x": {"v": 1}}  # still theirs, untouched


def test_an_unfinished_change_of_the_previous_format_is_rolled_back_first(memory):
    """Upgrading from a GCS store whose last change was cut short: its undo log (previous
    format) is re-sealed and rolled back before anything is migrated."""
    store, _ = previous_format_state(memory)
    before = {k: memory.get(k) for k in memory.list("ns/records/")}
    faulty = FaultyStore(memory, fail_at=3, atomic=False, crash=True)  # the log, one record, then a crash
    with pytest.raises(WriterCrash):
        RecordStore(faulty, "ns", key=TEST_KEY).write(1, {"backend/m": {"code_hash": "half"}})
    log = json.loads(memory.get("ns/txn"))
    memory.put("ns/txn", plain_document(log["payload"], log["epoch"]))  # as the previous format logged it
    assert {k: memory.get(k) for k in memory.list("ns/records/")} != before  # half applied
    faulty = FaultyStore(memory, fail_at=None, atomic=False)
    report = migrate_namespace(faulty, "ns", TEST_KEY, approved=[
        item.id for item in plan_migration(faulty, "ns", TEST_KEY).items])
    assert report.log_resealed and memory.get("ns/txn") is None
    # the half-applied record was authenticated when the operator looked; rolled back, it is
    # a previous-format one nobody named yet, so it is not signed until named
    assert "backend/m" not in report.records and "backend/m" not in RecordStore(
        memory, "ns", key=TEST_KEY).read_all(skip_refused=True)
    migrate_namespace(faulty, "ns", TEST_KEY, approved=every_item(memory))
    assert RecordStore(memory, "ns", key=TEST_KEY).read_all() == RECORDS
