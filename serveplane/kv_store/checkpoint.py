"""Epoch fencing over a ``KVStore``: the whole-state ``CheckpointStore`` and the per-record
``RecordStore``, plus content-addressed blobs.

Keys, for a namespace ``ns``: ``ns/epoch`` (decimal int), ``ns/checkpoint`` and
``ns/checkpoint.backup`` (codec envelopes), ``ns/records/<kind>/<name>`` (and ``.backup``),
``ns/blob/<sha256>``.

Fencing invariant: once ``acquire_epoch()`` has returned epoch E, no writer holding an epoch
below E can change the checkpoint. How: ``acquire_epoch`` bumps ``ns/epoch`` by CAS, then
re-stamps the checkpoint key with E by CAS (or, when the namespace has no state yet, writes a
fence: an envelope with a ``null`` payload). Every write reads the checkpoint, refuses if it
(or ``ns/epoch``) carries an epoch above the writer's, and swaps by CAS against exactly the
bytes it read. Those bytes carry an epoch at most the writer's, and after the re-stamp the key
only ever holds epochs >= E, so a stale writer's CAS can never match again.

On the Ray GCS store, CAS on an existing key is atomic within one process only (see
``ray_kv.py``); the invariant then holds for writers in one process, and across processes
relies on the controller being the single writer of its namespace.
"""

from __future__ import annotations

import hashlib
from typing import Any

from serveplane.exceptions import CorruptCheckpointError, StaleEpochError
from serveplane.kv_store.base import KVStore
from serveplane.kv_store.codec import (
    SCHEMA_VERSION,
    decode_checkpoint,
    decode_envelope,
    encode_checkpoint,
    encode_envelope,
)

__all__ = ["SCHEMA_VERSION", "CheckpointStore", "RecordStore", "bump_epoch", "decode_checkpoint",
           "encode_checkpoint"]

MAX_CAS_RETRIES = 100


def _parse_epoch(epoch_key: str, raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise CorruptCheckpointError(
            f"epoch key {epoch_key!r} holds {raw[:32]!r}; it must be a decimal integer") from None


def read_epoch(store: KVStore, epoch_key: str) -> int:
    """The epoch that owns the namespace now (0 before the first ``acquire_epoch``)."""
    return _parse_epoch(epoch_key, store.get(epoch_key))


def bump_epoch(store: KVStore, epoch_key: str) -> int:
    """Take the next epoch by compare-and-set; the one place epochs are allocated."""
    for _ in range(MAX_CAS_RETRIES):
        raw = store.get(epoch_key)
        epoch = _parse_epoch(epoch_key, raw)
        if store.compare_and_set(epoch_key, raw, str(epoch + 1).encode()):
            return epoch + 1
    raise StaleEpochError(f"could not take a new epoch on {epoch_key!r}: lost {MAX_CAS_RETRIES} races")


def _stale(epoch: int, owner: int, what: str) -> StaleEpochError:
    return StaleEpochError(f"checkpoint write with epoch {epoch} refused: epoch {owner} owns {what}")


class _Blobs:
    """Content-addressed blobs under ``<ns>/blob/<sha256>``: written once, verified on read."""

    def __init__(self, store: KVStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def key(self, digest: str) -> str:
        return f"{self.namespace}/blob/{digest}"

    def put(self, data: bytes) -> str:
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        key = self.key(digest)
        if not self.store.compare_and_set(key, None, data):
            existing = self.store.get(key)
            if existing != data:  # a damaged copy: the content hash says what it must be
                self.store.compare_and_set(key, existing, data)
        return digest

    def get(self, digest: str) -> bytes:
        key = self.key(digest)
        data = self.store.get(key)
        if data is None:
            raise CorruptCheckpointError(f"blob {key!r} named by the checkpoint is missing")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptCheckpointError(f"blob {key!r} fails its content hash; refusing to load it")
        return data


class CheckpointStore:
    """The whole target state as one fenced, checksummed document (see the module docstring).

    A corrupt primary falls back to ``<ns>/checkpoint.backup`` (a second copy written after
    each successful write); ``recovered_from_backup`` then says why.
    """

    def __init__(self, store: KVStore, namespace: str = "serveplane") -> None:
        self.store = store
        self.namespace = namespace
        self.checkpoint_key = f"{namespace}/checkpoint"
        self.backup_key = f"{namespace}/checkpoint.backup"
        self.epoch_key = f"{namespace}/epoch"
        self.recovered_from_backup: str | None = None
        self._blobs = _Blobs(store, namespace)

    def __repr__(self) -> str:
        return f"<CheckpointStore {self.namespace!r} on {self.store.url}>"

    def current_epoch(self) -> int:
        return read_epoch(self.store, self.epoch_key)

    def acquire_epoch(self) -> int:
        """Take a new epoch and fence the checkpoint with it; older epochs can write no more."""
        epoch = bump_epoch(self.store, self.epoch_key)
        for _ in range(MAX_CAS_RETRIES):
            current = self.store.get(self.checkpoint_key)
            if current is None:
                restamped = encode_envelope(None, epoch)  # the fence: no state yet
            else:
                stored_epoch, payload = self._load(current)
                if stored_epoch > epoch:
                    raise StaleEpochError(
                        f"epoch {epoch} refused: epoch {stored_epoch} already owns {self.namespace!r}")
                restamped = encode_envelope(payload, epoch)
            if self.store.compare_and_set(self.checkpoint_key, current, restamped):
                return epoch
        raise StaleEpochError(f"could not fence {self.checkpoint_key!r} with epoch {epoch}: "
                              f"lost {MAX_CAS_RETRIES} races")

    def write_checkpoint(self, epoch: int, payload: dict[str, Any]) -> None:
        """Replace the state, unless a newer epoch owns the namespace (``StaleEpochError``)."""
        new = encode_checkpoint(payload, epoch)
        self._fenced_write(self.checkpoint_key, epoch, new)
        try:
            # the backup only ever serves when the primary is corrupt; it need not be exact
            self._fenced_write(self.backup_key, epoch, new)
        except StaleEpochError:
            pass  # a successor took over after our primary write; it writes its own backup

    def _fenced_write(self, key: str, epoch: int, new: bytes) -> None:
        for _ in range(MAX_CAS_RETRIES):
            current = self.store.get(key)
            stored_epoch = 0
            if current is not None:
                try:
                    stored_epoch = decode_envelope(key, current)[0]
                except CorruptCheckpointError:
                    pass  # unreadable bytes carry no epoch; the epoch key still fences
            owner = max(stored_epoch, self.current_epoch())
            if owner > epoch:
                raise _stale(epoch, owner, repr(self.namespace))
            if self.store.compare_and_set(key, current, new):
                return
        raise StaleEpochError(f"checkpoint write with epoch {epoch} to {key!r} lost {MAX_CAS_RETRIES} races")

    def read_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """``(epoch, payload)``, or ``None`` when no state was ever written.

        A corrupt primary falls back to the backup (and sets ``recovered_from_backup``); both
        corrupt raises ``CorruptCheckpointError`` naming the primary key.
        """
        data = self.store.get(self.checkpoint_key)
        if data is None:
            return None
        epoch, payload = self._load(data)
        return None if payload is None else (epoch, payload)

    def _load(self, data: bytes) -> tuple[int, dict[str, Any] | None]:
        try:
            return decode_envelope(self.checkpoint_key, data)
        except CorruptCheckpointError as primary_error:
            backup = self.store.get(self.backup_key)
            if backup is None:
                raise
            try:
                loaded = decode_checkpoint(self.backup_key, backup)
            except CorruptCheckpointError:
                raise primary_error from None
            self.recovered_from_backup = str(primary_error)
            return loaded

    def repair_from_backup(self) -> None:
        """Replace a corrupt primary with the backup's state, stamped with the owning epoch so
        that the fence holds. A readable primary is left alone; a corrupt backup raises
        ``CorruptCheckpointError``."""
        current = self.store.get(self.checkpoint_key)
        if current is not None:
            try:
                decode_envelope(self.checkpoint_key, current)
                return
            except CorruptCheckpointError:
                pass
        backup = self.store.get(self.backup_key)
        if backup is None:
            return
        backup_epoch, payload = decode_checkpoint(self.backup_key, backup)
        repaired = encode_checkpoint(payload, max(backup_epoch, self.current_epoch()))
        self.store.compare_and_set(self.checkpoint_key, current, repaired)

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 (once) and return the hex digest."""
        return self._blobs.put(data)

    def get_blob(self, digest: str) -> bytes:
        """The blob with this digest; missing or damaged raises ``CorruptCheckpointError``."""
        return self._blobs.get(digest)


class RecordStore:
    """Checkpoint as one key per record (``<ns>/records/<kind>/<name>``), so a change to one
    backend costs O(that backend), not O(all state).

    Each record is encoded like a checkpoint (payload ``{"record": ...}``) and written by CAS
    after checking both the record's epoch and the epoch key; a second copy goes to
    ``<key>.backup``. ``acquire_epoch`` re-stamps every existing record, so once it returns no
    older epoch can change any of them. A deleted record becomes a tombstone (``None`` record)
    for the same reason: a plain delete could not be fenced.

    Limitation: a record name that did not exist when ``acquire_epoch`` listed the keys has no
    fence of its own; a stale writer is refused there only by the epoch-key check made just
    before its CAS, so a writer paused between that check and the CAS can still create it.
    """

    def __init__(self, store: KVStore, namespace: str = "serveplane") -> None:
        self.store = store
        self.namespace = namespace
        self.prefix = f"{namespace}/records/"
        self.epoch_key = f"{namespace}/epoch"
        self.recovered_from_backup: list[str] = []
        self._blobs = _Blobs(store, namespace)

    def __repr__(self) -> str:
        return f"<RecordStore {self.namespace!r} on {self.store.url}>"

    def key(self, name: str) -> str:
        return self.prefix + name

    def current_epoch(self) -> int:
        return read_epoch(self.store, self.epoch_key)

    def _keys(self) -> list[str]:
        return [k for k in self.store.list(self.prefix) if not k.endswith(".backup")]

    def acquire_epoch(self) -> int:
        epoch = bump_epoch(self.store, self.epoch_key)
        for key in self._keys():
            for _ in range(MAX_CAS_RETRIES):
                current = self.store.get(key)
                if current is None:
                    break
                stored_epoch, payload = self._decode(key, current)
                if stored_epoch > epoch:
                    raise StaleEpochError(f"epoch {epoch} refused: epoch {stored_epoch} already owns {key!r}")
                if self.store.compare_and_set(key, current, encode_checkpoint(payload, epoch)):
                    break
            else:
                raise StaleEpochError(f"could not fence {key!r} with epoch {epoch}: lost {MAX_CAS_RETRIES} races")
        return epoch

    def _decode(self, key: str, data: bytes) -> tuple[int, dict[str, Any]]:
        try:
            return decode_checkpoint(key, data)
        except CorruptCheckpointError as primary_error:
            backup = self.store.get(key + ".backup")
            if backup is None:
                raise
            try:
                loaded = decode_checkpoint(key + ".backup", backup)
            except CorruptCheckpointError:
                raise primary_error from None
            self.recovered_from_backup.append(str(primary_error))
            return loaded

    def write(self, epoch: int, records: dict[str, dict[str, Any] | None]) -> None:
        """Write (or tombstone, for ``None``) each named record, fenced by ``epoch``."""
        owner = self.current_epoch()
        if owner > epoch:
            raise _stale(epoch, owner, repr(self.namespace))
        for name, payload in records.items():
            key = self.key(name)
            new = encode_checkpoint({"record": payload}, epoch)
            for _ in range(MAX_CAS_RETRIES):
                current = self.store.get(key)
                if current is not None:
                    stored_epoch = self._decode(key, current)[0]
                    if stored_epoch > epoch:
                        raise _stale(epoch, stored_epoch, repr(key))
                owner = self.current_epoch()  # checked last, to narrow the window for new keys
                if owner > epoch:
                    raise _stale(epoch, owner, repr(self.namespace))
                if self.store.compare_and_set(key, current, new):
                    self.store.put(key + ".backup", new)
                    break
            else:
                raise StaleEpochError(f"checkpoint write of {key!r} lost {MAX_CAS_RETRIES} races")

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Every live record by name; a corrupt record (and backup) raises, naming its key."""
        out = {}
        for key in self._keys():
            data = self.store.get(key)
            if data is None:
                continue
            payload = self._decode(key, data)[1].get("record")
            if payload is not None:
                out[key[len(self.prefix):]] = payload
        return out

    def size_bytes(self) -> int:
        return sum(len(self.store.get(k) or b"") for k in self._keys())

    def put_blob(self, data: bytes) -> str:
        return self._blobs.put(data)

    def get_blob(self, digest: str) -> bytes:
        return self._blobs.get(digest)
