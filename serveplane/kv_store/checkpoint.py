"""The checkpoint: one fenced, authenticated record per backend, endpoint and goal.

Keys, for a namespace ``ns``:

- ``ns/records/<name>``: a record (``backend/x``, ``endpoint/y``, ``goal/z``), encoded by the
  codec as ``{"record": ...}`` with the writer's epoch and a MAC under the state key over the
  namespace, the name and the content; ``ns/backup/<name>``: its copy, read only when the
  primary is corrupt or fails authentication. (A separate prefix, not a ``.backup`` suffix,
  so that no record name can collide with another record's copy.)
- ``ns/blob/<sha256>``: content-addressed, authenticated blobs (``blobs.py``).
- ``ns/epochs/<epoch>`` and ``ns/epoch``: epoch claims (``epochs.py``).
- ``ns/txn``: the undo log, on stores without atomic transactions only (``change_log.py``).
- ``ns/commit``: the last change's commit record ``{"txn", "seq", "abandons"}`` (written by
  epoch E, authenticated like a record): every write puts it, last, in its transaction, and
  checks that it still holds what the writer saw before.

Invariants:

- **Fencing.** Once ``acquire_epoch()`` has returned E, no write by an older epoch lands:
  every write is one ``transact`` whose checks hold "the claim of (writer's epoch + 1) is
  absent", for new record names as much as for existing ones. Claiming costs the same
  whatever the number of records: nothing is re-stamped.
- **One change, one transaction.** A ``write`` (its records, their copies and its blobs)
  lands whole or not at all. Deletes are real deletes: the fence lives in the transaction,
  not in the record, so no tombstone is needed, and the keys in a namespace are only its live
  records (twice), live blobs and one claim per controller start.
- **Nothing half loaded.** ``read_all`` returns every record or raises
  ``CorruptCheckpointError`` naming the key whose primary and copy are both unreadable;
  ``read_all(skip_refused=True)`` (the controller's recovery) leaves such records out and
  lists them in ``refused``, so they can be reported, never trusted.
- **Only key holders write state that loads.** Records, the undo log and blobs are
  authenticated under the state key (``auth.py``), which the store never holds: whoever can
  write the store but does not hold the key can delete or replay what a key holder wrote,
  never add or change a record or blob that loads.

On a store whose ``transact`` is not atomic (the Ray GCS KV; see ``ray_kv.py``) the same
``write`` first logs the change in ``ns/txn`` with what each key held before, applies it key
by key, then deletes the log. A change cut short by a crash or a store error is rolled back
from the log, by whichever writer comes next (the same controller before its next write, or
the next controller in ``acquire_epoch``): its writer never returned success, so a write that
raised never takes effect, on this store as on the others. What stays weaker there:

- the fence is a read followed by writes, not one atomic step, so a writer paused between its
  fence check and its writes can still land one change after a successor claimed its epoch
  (the successor rolls it back only if it finds the log, i.e. if the change is unfinished);
- readers in other processes can see a change half applied until it finishes or is rolled
  back;
- a zombie in that window can overwrite or delete the successor's log.
The controller, the single writer of its namespace, stops at its first refused write.

**Unknown commit results** (FoundationDB's ``commit_unknown_result``). A store call can raise
after its write applied (a reply lost after Redis ran the script, a connection reset after
commit). Every change carries a transaction id, recorded in ``ns/commit`` by the change
itself, and each change checks that ``ns/commit`` still holds the commit record before it.
So when a write raises, ``write`` reads ``ns/commit`` back before anything is told:

- it holds this change's id: the change applied; ``write`` returns as if nothing had failed;
- it still holds the record before: the change may still be in flight (a late ``EXEC``), so
  the writer fences it off by writing an *abandon* commit record over that one (a change
  checked against the old record can then never apply) and raises the error: not written;
- the store cannot be read: ``CommitUnknownError``; the write is ``unresolved`` and every
  later write refuses to start until ``resolve()`` says what happened.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from serveplane.exceptions import (
    CorruptCheckpointError,
    InvalidInputError,
    KVStoreUnavailableError,
    StaleEpochError,
)
from serveplane.kv_store.auth import StateKey
from serveplane.kv_store.base import Changes, KVStore
from serveplane.kv_store.blobs import Blobs
from serveplane.kv_store.change_log import ChangeLog
from serveplane.kv_store.codec import RecordCodec
from serveplane.kv_store.epochs import EpochClaims
from serveplane.kv_store.high_water import HighWaterMark
from serveplane.redact import redact_url

__all__ = ["CommitUnknownError", "RecordStore"]

logger = logging.getLogger(__name__)

COMMIT_NAME = "commit"
RESOLVE_READS = 3  # reads of the commit record before an outcome is declared unknown


class CommitUnknownError(KVStoreUnavailableError):
    """A write raised and its outcome could not be read back: it may or may not be in the
    store. The writer writes nothing more until ``RecordStore.resolve`` settles it."""


@dataclass(frozen=True)
class _Pending:
    """A write whose outcome is not known yet."""

    epoch: int
    txn: str
    mine: bytes              # the commit record it wrote
    previous: bytes | None   # the commit record it checked


class RecordStore:
    """Records, blobs and epochs of one namespace on one ``KVStore`` (see the module docstring).

    ``recovered_from_backup`` lists, for the last ``read_all``, why each record that was
    served from its copy had an unreadable primary; ``refused`` maps each record left out by
    the last ``read_all(skip_refused=True)`` to why.
    """

    def __init__(self, store: KVStore, namespace: str = "serveplane", *, key: StateKey,
                 high_water: HighWaterMark | None = None) -> None:
        self.store = store
        self.high_water = high_water
        self.namespace = namespace
        self.state_key = key
        self.atomic: bool = store.atomic_transactions
        self.recovered_from_backup: list[str] = []
        self.refused: dict[str, str] = {}
        self._prefix = f"{namespace}/records/"
        self._backup_prefix = f"{namespace}/backup/"
        self._codec = RecordCodec(key, namespace)
        self._epochs = EpochClaims(store, namespace)
        self._blobs = Blobs(store, namespace, key)
        self._log = ChangeLog(store, self._codec)
        self._commit_key = f"{namespace}/{COMMIT_NAME}"
        self._last_commit: bytes | None = None
        self._commit_read = False
        self.unresolved: _Pending | None = None

    def __repr__(self) -> str:
        mode = "atomic" if self.atomic else "undo-logged"
        return (f"<RecordStore {self.namespace!r} on {redact_url(self.store.url)} [{mode} writes, "
                f"{self.state_key.describe()}]>")

    def key(self, name: str) -> str:
        return self._prefix + name

    def backup_key(self, name: str) -> str:
        return self._backup_prefix + name

    # -- epochs ----------------------------------------------------------------------------
    def acquire_epoch(self) -> int:
        """Claim the next epoch; from now on older epochs can write nothing here. With a
        high-water mark, a store rolled back behind it is refused first
        (``StoreRolledBackError``, nothing claimed)."""
        if self.high_water is not None:
            last = self.last_commit()
            self.high_water.check(int(last["epoch"]) if last else 0, int(last["seq"]) if last else 0)
        epoch = self._epochs.claim_next()
        if not self.atomic:
            # after the claim, not before: the predecessor can no longer add to the change
            # this rolls back
            self._roll_back_logged_change(epoch)
        return epoch

    def current_epoch(self) -> int:
        """The highest claimed epoch (0 before any)."""
        return self._epochs.highest()

    def check_epoch(self, epoch: int) -> None:
        """Raise ``StaleEpochError`` if a later epoch was claimed (one store read)."""
        if self.store.get(self._epochs.fence_key(epoch)) is not None:
            raise self._stale(f"epoch {epoch} is stale", epoch)

    def _stale(self, what: str, epoch: int) -> StaleEpochError:
        owner = max(self._epochs.highest(), epoch + 1)
        return StaleEpochError(f"{what}: epoch {owner} owns {self.namespace!r}")

    # -- writes ----------------------------------------------------------------------------
    def write(self, epoch: int, records: Mapping[str, dict[str, Any] | None],
              blobs: Mapping[str, bytes | None] | None = None, txn: str | None = None) -> str:
        """Write each record (``None`` deletes it) and each blob (by digest; ``None`` deletes
        it) as one change, unless a later epoch was claimed (``StaleEpochError``). Everything
        is validated before anything is sent. Returns the change's transaction id. A store
        error is resolved by reading back (see the module docstring): raised only when the
        change is known not to be written, else ``CommitUnknownError``."""
        writes = self._record_writes(epoch, records)
        writes.update(self._blobs.writes(blobs or {}))
        if self.unresolved is not None:
            raise CommitUnknownError(
                self.store.url, f"write of change {txn or '(new)'}",
                f"change {self.unresolved.txn} has an unknown outcome; resolve it first")
        txn = txn or uuid.uuid4().hex
        for attempt in range(2):
            previous = self._previous_commit()
            mine = self._commit_doc(epoch, txn, previous)
            change = {**writes, self._commit_key: mine}  # last: on a logged store, present means all applied
            checks = {self._epochs.fence_key(epoch): None, self._commit_key: previous}
            try:
                written = (self.store.transact(checks, change) if self.atomic
                           else self._write_logged(epoch, checks, change))
            except KVStoreUnavailableError as exc:
                written = self._resolve_failed(_Pending(epoch, txn, mine, previous), exc)
            if written:
                self._last_commit = mine
                self._raise_high_water(epoch, mine)
                return txn
            if self.store.get(self._epochs.fence_key(epoch)) is not None:
                break
            self._commit_read = False  # another writer of this epoch moved the commit record: re-read once
        raise self._stale(f"checkpoint write with epoch {epoch} refused", epoch)

    def _raise_high_water(self, epoch: int, commit: bytes) -> None:
        if self.high_water is None:
            return
        try:
            seq = int(self._codec.decode(COMMIT_NAME, commit, self._commit_key)[1]["seq"])
            self.high_water.raise_to(epoch, seq)
        except Exception as exc:  # noqa: BLE001 - the change is committed; the mark lags one change
            logger.warning("could not raise the high-water mark of %r: %s", self.namespace, exc)

    def resolve(self) -> bool | None:
        """Settle an unresolved write: True if it applied, False if it did not (and never
        will), None while the store still cannot tell. No-op (False) when none is pending."""
        pending = self.unresolved
        if pending is None:
            return False
        try:
            return self._settle(pending)
        except KVStoreUnavailableError:
            return None

    def _resolve_failed(self, pending: _Pending, exc: KVStoreUnavailableError) -> bool:
        """A write raised: True if it applied; raise ``exc`` if it did not; else unknown."""
        self.unresolved = pending
        for _ in range(RESOLVE_READS):
            try:
                applied = self._settle(pending)
            except KVStoreUnavailableError:
                continue
            if applied:
                return True
            raise exc
        raise CommitUnknownError(
            self.store.url, f"write of change {pending.txn}",
            f"{exc.cause}; its outcome could not be read back, so it may or may not be written")

    def _settle(self, pending: _Pending) -> bool:
        current = self.store.get(self._commit_key)
        if current == pending.mine:
            self._finish_logged()
            self.unresolved, self._last_commit, self._commit_read = None, pending.mine, True
            return True
        if current == pending.previous:  # not applied yet: make sure it never will
            abandon = self._commit_doc(pending.epoch, uuid.uuid4().hex, current, abandons=pending.txn)
            if not self.store.transact({self._epochs.fence_key(pending.epoch): None,
                                        self._commit_key: current}, {self._commit_key: abandon}):
                return self._settle(pending)  # it landed meanwhile, or we are stale: look again
            current = abandon
        if not self.atomic:
            self._roll_back_logged_change(pending.epoch)
        self.unresolved, self._last_commit, self._commit_read = None, current, True
        return False

    def _finish_logged(self) -> None:
        if not self.atomic:
            try:
                self._log.clear()
            except KVStoreUnavailableError:
                pass  # a log whose change committed is cleared, not rolled back, by the next writer

    def _previous_commit(self) -> bytes | None:
        if not self._commit_read:
            self._last_commit = self.store.get(self._commit_key)
            self._commit_read = True
        return self._last_commit

    def _commit_doc(self, epoch: int, txn: str, previous: bytes | None, abandons: str | None = None) -> bytes:
        seq = 0
        if previous is not None:
            try:
                seq = int(self._codec.decode(COMMIT_NAME, previous, self._commit_key)[1].get("seq", 0))
            except (CorruptCheckpointError, TypeError, ValueError):
                seq = 0
        return self._codec.encode(COMMIT_NAME, {"txn": txn, "seq": seq + 1, "abandons": abandons}, epoch)

    def last_commit(self) -> dict[str, Any] | None:
        """The commit record the store holds (``txn``, ``seq``, ``epoch``), or None."""
        raw = self.store.get(self._commit_key)
        if raw is None:
            return None
        epoch, payload = self._codec.decode(COMMIT_NAME, raw, self._commit_key)
        return {**payload, "epoch": epoch}

    def _record_writes(self, epoch: int, records: Mapping[str, dict[str, Any] | None]) -> Changes:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InvalidInputError(f"checkpoint epoch {epoch!r} is invalid; it must be an int >= 0")
        writes: Changes = {}
        for name, record in records.items():
            if not isinstance(name, str) or not name:
                raise InvalidInputError(f"record name {name!r} is invalid; names are non-empty strings")
            if record is not None and not isinstance(record, dict):
                raise InvalidInputError(
                    f"record {name!r} is a {type(record).__name__}; a record is a dict of JSON "
                    "values (None deletes it)")
            data = None if record is None else self._codec.encode(name, {"record": record}, epoch)
            writes[self.key(name)] = writes[self.backup_key(name)] = data
        return writes

    def _write_logged(self, epoch: int, checks: Changes, writes: Changes) -> bool:
        """``write`` on a store without atomic transactions: roll back any leftover change,
        log this one (with what its keys held), apply it, clear the log."""
        fence_key = self._epochs.fence_key(epoch)
        if self.store.get(fence_key) is not None:
            return False  # checked before logging, so that a stale writer leaves no log
        if not self._roll_back_logged_change(epoch):
            return False
        self._log.write(epoch, {key: self.store.get(key) for key in writes}, writes)
        if not self.store.transact(checks, writes):
            return False  # refused before writing; the log goes with the next roll-back
        self._log.clear()
        return True

    def settle(self) -> None:
        """Roll back an unfinished change, as the next writer would (stores without atomic
        transactions; a no-op elsewhere). For tools that read a store no controller owns."""
        if not self.atomic:
            self._roll_back_logged_change(self.current_epoch())

    def _roll_back_logged_change(self, epoch: int) -> bool:
        """Undo the logged change, whoever wrote it (its writer never returned success), and
        clear the log. False when a later epoch refused the roll-back."""
        logged = self._log.read()
        if logged is None:
            return True
        _, before, after = logged
        if self._commit_key in after and self.store.get(self._commit_key) == after[self._commit_key]:
            self._log.clear()  # its commit record, written last, landed: the change is whole
            return True
        fence_key = self._epochs.fence_key(epoch)
        for key, value in self._log.undo_writes(before, after).items():
            current = self.store.get(key)
            if current != after[key] or current == value:
                continue  # never written by that change, or written over since
            if not self.store.transact({fence_key: None, key: current}, {key: value}):
                if self.store.get(fence_key) is not None:
                    return False
        self._log.clear()
        return True

    # -- reads -----------------------------------------------------------------------------
    def read_all(self, skip_refused: bool = False) -> dict[str, dict[str, Any]]:
        """Every live record by name. A corrupt or unauthenticated primary is served from its
        copy (and noted in ``recovered_from_backup``); both unreadable raises, naming the
        primary's key, or with ``skip_refused`` leaves the record out and notes it in
        ``refused``."""
        self.recovered_from_backup = []
        self.refused = {}
        out = {}
        for key in self.store.list(self._prefix):
            data = self.store.get(key)
            if data is None:
                continue  # deleted since the listing
            name = key[len(self._prefix):]
            try:
                payload = self._decode(name, data)
            except CorruptCheckpointError as exc:
                if not skip_refused:
                    raise
                self.refused[name] = str(exc)
                continue
            record = payload.get("record")
            if record is not None:  # only an older layout wrote null records (tombstones)
                out[name] = record
        return out

    def _decode(self, name: str, data: bytes) -> dict[str, Any]:
        key = self.key(name)
        try:
            return self._codec.decode(name, data, key)[1]
        except CorruptCheckpointError as primary_error:
            backup_key = self.backup_key(name)
            backup = self.store.get(backup_key)
            if backup is None:
                raise
            try:
                payload = self._codec.decode(name, backup, backup_key)[1]
            except CorruptCheckpointError:
                raise primary_error from None
            self.recovered_from_backup.append(str(primary_error))
            return payload

    # -- blobs -----------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 (once, no fence needed) and return the hex digest."""
        return self._blobs.put(data)

    def blob_key(self, digest: str) -> str:
        return self._blobs.key(digest)

    def get_blob(self, digest: str) -> bytes:
        """The blob with this digest; missing or damaged raises ``CorruptCheckpointError``."""
        return self._blobs.get(digest)

    def blob_digests(self) -> set[str]:
        """The digest of every blob stored, for garbage collection."""
        return self._blobs.digests()
