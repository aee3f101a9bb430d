"""``migrate_namespace`` never signs what someone without the key planted: a namespace that
already holds authenticated state or epoch claims is migrated only item by item, as the
operator names them after a dry run; an authenticated copy always wins over an
unauthenticated one; a raw blob is signed only when a record it would serve names it."""

from __future__ import annotations

import json
import uuid

import pytest

from serveplane.exceptions import InvalidInputError
from serveplane.kv_store import MemoryKVStore, RecordStore
from serveplane.kv_store.migrate import migrate_namespace, plan_migration
from tests.attacker import evil_pickle, plain_document, plant_blob
from tests.conftest import TEST_KEY

NS = "ns"


@pytest.fixture
def memory():
    return MemoryKVStore(f"memory://{uuid.uuid4().hex}")


def authenticated_state(memory):
    store = RecordStore(memory, NS, key=TEST_KEY)
    epoch = store.acquire_epoch()
    digest = store.put_blob(b"\x80\x05good")
    store.write(epoch, {"backend/m": {"code_hash": digest}})
    return store


def plant(memory, name, record, epoch=1):
    doc = plain_document({"record": record}, epoch)
    memory.put(f"{NS}/records/{name}", doc)
    memory.put(f"{NS}/backup/{name}", doc)


def test_a_v1_record_planted_beside_authenticated_state_is_never_signed(memory, tmp_path):
    store = authenticated_state(memory)
    evil = plant_blob(memory, NS, evil_pickle(str(tmp_path / "ran")))
    plant(memory, "backend/evil", {"code_hash": evil})
    before = {k: memory.get(k) for k in memory.list(f"{NS}/")}
    plan = plan_migration(memory, NS, TEST_KEY)
    assert plan.guarded and "already holds authenticated state" in plan.guarded
    with pytest.raises(InvalidInputError, match="name each item you checked with --item"):
        migrate_namespace(memory, NS, TEST_KEY)
    assert {k: memory.get(k) for k in memory.list(f"{NS}/")} == before  # nothing written, no epoch
    assert set(store.read_all(skip_refused=True)) == {"backend/m"} and "backend/evil" in store.refused
    assert evil not in {i.id.split(":", 1)[1] for i in plan.items if i.id.startswith("blob:") and i.safe}


def test_epoch_claims_alone_guard_the_namespace(memory):
    RecordStore(memory, NS, key=TEST_KEY).acquire_epoch()
    plant(memory, "endpoint/ep", {"route": "/ep"})
    plan = plan_migration(memory, NS, TEST_KEY)
    assert plan.guarded and "epoch claims" in plan.guarded
    with pytest.raises(InvalidInputError, match="epoch claims"):
        migrate_namespace(memory, NS, TEST_KEY)


def test_named_items_are_migrated_and_nothing_else(memory):
    store = authenticated_state(memory)
    blob = plant_blob(memory, NS, b"\x80\x05checked")
    plant(memory, "backend/ok", {"code_hash": blob})
    plant(memory, "endpoint/unchecked", {"route": "/x"})
    plan = plan_migration(memory, NS, TEST_KEY)
    ids = {item.id: item for item in plan.items}
    record_id = next(i for i in ids if i.startswith("record:backend/ok#"))
    blob_id = f"blob:{blob}"
    assert blob_id in ids and ids[blob_id].named_by == ["backend/ok"]
    report = migrate_namespace(memory, NS, TEST_KEY, approved=[record_id, blob_id])
    assert set(report.records) == {"backend/ok"} and set(report.blobs) == {blob}
    loaded = RecordStore(memory, NS, key=TEST_KEY).read_all(skip_refused=True)
    assert set(loaded) == {"backend/m", "backend/ok"} and store.get_blob(blob) == b"\x80\x05checked"


def test_a_named_item_whose_content_changed_since_the_dry_run_is_refused(memory):
    authenticated_state(memory)
    plant(memory, "endpoint/ep", {"route": "/ep"})
    item = next(i.id for i in plan_migration(memory, NS, TEST_KEY).items)
    plant(memory, "endpoint/ep", {"route": "/swapped"})  # changed after the operator looked
    with pytest.raises(InvalidInputError, match="is not among what this migration would sign"):
        migrate_namespace(memory, NS, TEST_KEY, approved=[item])


def test_an_authenticated_copy_wins_over_an_unauthenticated_primary(memory):
    store = authenticated_state(memory)
    evil = plant_blob(memory, NS, b"\x80\x05evil")
    memory.put(f"{NS}/records/backend/m", plain_document({"record": {"code_hash": evil}}, 1))
    plan = plan_migration(memory, NS, TEST_KEY)
    assert plan.records == {} and plan.blobs == {}
    report = migrate_namespace(memory, NS, TEST_KEY, approved=[i.id for i in plan.items])
    assert report.records == {}
    assert store.read_all()["backend/m"]["code_hash"] != evil


def test_a_raw_blob_no_record_names_is_not_signed(memory):
    plant(memory, "endpoint/ep", {"route": "/ep"})  # a pristine previous-format namespace
    stray = plant_blob(memory, NS, b"\x80\x05stray")
    report = migrate_namespace(memory, NS, TEST_KEY)
    assert set(report.records) == {"endpoint/ep"} and report.blobs == {}
    assert "no record" in report.refused[f"{NS}/blob/{stray}"]


def test_the_dry_run_shows_what_would_be_signed(memory):
    authenticated_state(memory)
    blob = plant_blob(memory, NS, b"\x80\x05x")
    plant(memory, "backend/b", {"code_hash": blob})
    plan = plan_migration(memory, NS, TEST_KEY)
    shown = {item.id: item.shown for item in plan.items}
    record = next(s for i, s in shown.items() if i.startswith("record:backend/b#"))
    assert json.loads(record) == {"code_hash": blob}
    assert "named by backend/b" in shown[f"blob:{blob}"] and "3 bytes" in shown[f"blob:{blob}"]
