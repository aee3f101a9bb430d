"""Unknown commit results: a store call that raised after (or before) its write applied is
resolved by reading the change's commit record back before anyone is told."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from serveplane.controller.persistence import Change, Persistence, inline_runner
from serveplane.exceptions import KVStoreUnavailableError, StaleEpochError
from serveplane.kv_store import MemoryKVStore, RecordStore
from serveplane.kv_store.checkpoint import CommitUnknownError
from tests.conftest import TEST_KEY
from tests.unit.kv.kv_helpers import FaultyStore, InjectedFault

BEFORE = {"backend/a": {"v": 1}}
CHANGE = {"backend/a": {"v": 2}, "endpoint/ghost": {"route": "/g"}}
AFTER = {"backend/a": {"v": 2}, "endpoint/ghost": {"route": "/g"}}


class BlindStore(FaultyStore):
    """``FaultyStore`` whose reads also fail while ``blind`` (set by the failing write)."""

    def __init__(self, inner, fail_at, lost_reply):
        super().__init__(inner, fail_at=fail_at, lost_reply=lost_reply)
        self.blind = False

    def _mutation(self, operation, apply):
        if self.blind:
            raise InjectedFault(self.url, operation, "still unreachable")
        try:
            return super()._mutation(operation, apply)
        except InjectedFault:
            self.blind = True
            raise

    def get(self, key):
        if self.blind:
            raise InjectedFault(self.url, f"get {key!r}", "still unreachable")
        return super().get(key)


@pytest.fixture
def memory():
    return MemoryKVStore(f"memory://{uuid.uuid4().hex}")


def owned(memory, store=None):
    writer = RecordStore(store or memory, "ns", key=TEST_KEY)
    epoch = writer.acquire_epoch()
    writer.write(epoch, BEFORE)
    return writer, epoch


@pytest.mark.parametrize("lost_reply", [True, False], ids=["reply-lost", "failed"])
def test_an_atomic_write_answers_what_the_store_holds(memory, lost_reply):
    writer, epoch = owned(memory)
    writer.store = faulty = FaultyStore(memory, fail_at=1, lost_reply=lost_reply)
    if lost_reply:
        txn = writer.write(epoch, CHANGE)  # applied: answered as written
        assert RecordStore(memory, "ns", key=TEST_KEY).last_commit()["txn"] == txn
    else:
        with pytest.raises(InjectedFault):
            writer.write(epoch, CHANGE)
    assert faulty.faulted
    assert RecordStore(memory, "ns", key=TEST_KEY).read_all() == (AFTER if lost_reply else BEFORE)


@pytest.mark.parametrize("lost_reply", [True, False], ids=["reply-lost", "failed"])
def test_an_outcome_the_store_cannot_tell_blocks_writes_until_resolved(memory, lost_reply):
    writer, epoch = owned(memory)
    writer.store = blind = BlindStore(memory, fail_at=1, lost_reply=lost_reply)
    with pytest.raises(CommitUnknownError, match="may or may not be written"):
        writer.write(epoch, CHANGE)
    with pytest.raises(CommitUnknownError, match="has an unknown outcome; resolve it first"):
        writer.write(epoch, {"goal/g": {}})
    assert writer.resolve() is None  # still blind
    blind.blind = False
    assert writer.resolve() is lost_reply
    assert writer.unresolved is None
    writer.write(epoch, {"goal/g": {}})
    assert RecordStore(memory, "ns", key=TEST_KEY).read_all() == {**(AFTER if lost_reply else BEFORE), "goal/g": {}}


def test_persistence_never_commits_memory_for_a_change_it_could_not_resolve(memory):
    writer, epoch = owned(memory)
    blind = BlindStore(memory, fail_at=1, lost_reply=True)
    writer.store = blind
    persistence = Persistence(writer, epoch, inline_runner)
    with pytest.raises(CommitUnknownError):
        asyncio.run(persistence.write(Change(records=dict(CHANGE))))
    blind.blind = False
    # the change landed after all: memory (which never took it) is behind the store
    with pytest.raises(StaleEpochError, match="memory is behind its store; restart the controller"):
        asyncio.run(persistence.write(Change(records={"goal/g": {}})))
    assert persistence.stale is not None


def test_persistence_carries_on_when_the_unknown_change_turns_out_not_written(memory):
    writer, epoch = owned(memory)
    blind = BlindStore(memory, fail_at=1, lost_reply=False)
    writer.store = blind
    persistence = Persistence(writer, epoch, inline_runner)
    with pytest.raises(KVStoreUnavailableError):
        asyncio.run(persistence.write(Change(records=dict(CHANGE))))
    blind.blind = False
    asyncio.run(persistence.write(Change(records={"goal/g": {}})))
    assert RecordStore(memory, "ns", key=TEST_KEY).read_all() == {**BEFORE, "goal/g": {}}
