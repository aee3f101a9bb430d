"""Checkpoint codec and epoch fencing.

Format: ``{"schema_version", "epoch", "checksum", "payload"}`` as JSON, where checksum is the
SHA-256 of the payload's canonical JSON. Decoding either returns the whole payload or raises
``CorruptCheckpointError`` naming the key: never a partial state.

Fencing: ``acquire_epoch`` bumps ``<ns>/epoch`` by compare-and-set and then re-stamps the
stored checkpoint with the new epoch (by CAS). Every write compares the stored checkpoint
and epoch with the writer's: a writer with an older epoch gets ``StaleEpochError`` and
writes nothing. After ``acquire_epoch`` returns, no older epoch can write again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from serveplane.exceptions import CorruptCheckpointError, StaleEpochError
from serveplane.kv_store.base import KVStore

SCHEMA_VERSION = 1
MAX_CAS_RETRIES = 100


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_checkpoint(payload: dict[str, Any], epoch: int) -> bytes:
    body = _canonical(payload)
    return json.dumps({"schema_version": SCHEMA_VERSION, "epoch": epoch,
                       "checksum": hashlib.sha256(body).hexdigest(), "payload": payload},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_checkpoint(key: str, data: bytes) -> tuple[int, dict[str, Any]]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"checkpoint {key!r} is not valid JSON ({exc}); refusing to load it") from None
    if not isinstance(doc, dict) or not {"schema_version", "epoch", "checksum", "payload"} <= set(doc):
        raise CorruptCheckpointError(
            f"checkpoint {key!r} lacks schema_version, epoch, checksum or payload; refusing to load it")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise CorruptCheckpointError(
            f"checkpoint {key!r} has unknown schema_version {doc['schema_version']!r}; this "
            f"serveplane reads version {SCHEMA_VERSION}")
    payload = doc["payload"]
    if not isinstance(payload, dict) or not isinstance(doc["epoch"], int):
        raise CorruptCheckpointError(f"checkpoint {key!r} has a malformed payload or epoch")
    if hashlib.sha256(_canonical(payload)).hexdigest() != doc["checksum"]:
        raise CorruptCheckpointError(f"checkpoint {key!r} fails its checksum; refusing to load it")
    return doc["epoch"], payload


def bump_epoch(store: KVStore, epoch_key: str) -> int:
    """Take the next epoch by compare-and-set; the one place epochs are allocated."""
    for _ in range(MAX_CAS_RETRIES):
        raw = store.get(epoch_key)
        epoch = (int(raw) if raw is not None else 0) + 1
        if store.compare_and_set(epoch_key, raw, str(epoch).encode()):
            return epoch
    raise StaleEpochError(f"could not take a new epoch on {epoch_key!r}: too much contention")


class CheckpointStore:
    def __init__(self, store: KVStore, namespace: str = "serveplane") -> None:
        self.store = store
        self.namespace = namespace
        self.checkpoint_key = f"{namespace}/checkpoint"
        self.backup_key = f"{namespace}/checkpoint.backup"
        self.epoch_key = f"{namespace}/epoch"
        self.recovered_from_backup: str | None = None  # why, when the primary was corrupt

    def current_epoch(self) -> int:
        raw = self.store.get(self.epoch_key)
        return int(raw) if raw is not None else 0

    def acquire_epoch(self) -> int:
        epoch = bump_epoch(self.store, self.epoch_key)
        # re-stamp the checkpoint so that a writer holding an older epoch is refused
        for _ in range(MAX_CAS_RETRIES):
            current = self.store.get(self.checkpoint_key)
            if current is None:
                return epoch
            try:
                stored_epoch, payload = decode_checkpoint(self.checkpoint_key, current)
            except CorruptCheckpointError:
                loaded = self.read_checkpoint()  # falls back to the backup, or raises
                assert loaded is not None
                stored_epoch, payload = loaded
            if stored_epoch > epoch:
                raise StaleEpochError(
                    f"epoch {epoch} refused: epoch {stored_epoch} already owns {self.namespace!r}")
            if self.store.compare_and_set(self.checkpoint_key, current, encode_checkpoint(payload, epoch)):
                return epoch
        raise StaleEpochError(f"could not re-stamp {self.checkpoint_key!r} with epoch {epoch}")

    def write_checkpoint(self, epoch: int, payload: dict[str, Any]) -> None:
        new = encode_checkpoint(payload, epoch)
        for _ in range(MAX_CAS_RETRIES):
            current = self.store.get(self.checkpoint_key)
            stored_epoch = decode_checkpoint(self.checkpoint_key, current)[0] if current is not None else 0
            owner = max(stored_epoch, self.current_epoch())
            if owner > epoch:
                raise StaleEpochError(
                    f"checkpoint write with epoch {epoch} refused: epoch {owner} owns {self.namespace!r}")
            if self.store.compare_and_set(self.checkpoint_key, current, new):
                # a second copy, written after the fenced one: a corrupt primary is not fatal
                self.store.put(self.backup_key, new)
                return
        raise StaleEpochError(f"checkpoint write with epoch {epoch} lost {MAX_CAS_RETRIES} races")

    def read_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """The stored state; a corrupt primary falls back to the backup copy (and says so in
        ``recovered_from_backup``); both corrupt raises ``CorruptCheckpointError``."""
        data = self.store.get(self.checkpoint_key)
        if data is None:
            return None
        try:
            return decode_checkpoint(self.checkpoint_key, data)
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
        """Overwrite a corrupt primary with the (good) backup, keeping the fence."""
        backup = self.store.get(self.backup_key)
        current = self.store.get(self.checkpoint_key)
        if backup is not None:
            self.store.compare_and_set(self.checkpoint_key, current, backup)

    def _blob_key(self, digest: str) -> str:
        return f"{self.namespace}/blob/{digest}"

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.store.compare_and_set(self._blob_key(digest), None, data)  # stored once
        return digest

    def get_blob(self, digest: str) -> bytes:
        key = self._blob_key(digest)
        data = self.store.get(key)
        if data is None:
            raise CorruptCheckpointError(f"blob {key!r} named by the checkpoint is missing")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptCheckpointError(f"blob {key!r} fails its content hash")
        return data


class RecordStore:
    """Checkpoint as one key per record (``<ns>/records/<kind>/<name>``), so a change to one
    backend costs O(that backend), not O(all state).

    Each record is encoded like a checkpoint (schema version, epoch, checksum) and written
    by compare-and-set after checking both the record's epoch and the epoch key; a second
    copy goes to ``<key>.backup``. ``acquire_epoch`` re-stamps every record, so once it
    returns no older epoch can write any record again. A deleted record becomes a
    tombstone (``None`` payload) for the same reason: a plain delete could not be fenced.
    """

    def __init__(self, store: KVStore, namespace: str = "serveplane") -> None:
        self.store = store
        self.namespace = namespace
        self.prefix = f"{namespace}/records/"
        self.epoch_key = f"{namespace}/epoch"
        self.recovered_from_backup: list[str] = []

    def key(self, name: str) -> str:
        return self.prefix + name

    def current_epoch(self) -> int:
        raw = self.store.get(self.epoch_key)
        return int(raw) if raw is not None else 0

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
            raise StaleEpochError(f"checkpoint write with epoch {epoch} refused: epoch {owner} owns "
                                  f"{self.namespace!r}")
        for name, payload in records.items():
            key = self.key(name)
            new = encode_checkpoint({"record": payload}, epoch)
            for _ in range(MAX_CAS_RETRIES):
                current = self.store.get(key)
                if current is not None:
                    stored_epoch = self._decode(key, current)[0]
                    if stored_epoch > epoch:
                        raise StaleEpochError(f"checkpoint write with epoch {epoch} refused: epoch "
                                              f"{stored_epoch} owns {key!r}")
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

    # blobs: same layout as CheckpointStore
    def put_blob(self, data: bytes) -> str:
        return CheckpointStore(self.store, self.namespace).put_blob(data)

    def get_blob(self, digest: str) -> bytes:
        return CheckpointStore(self.store, self.namespace).get_blob(digest)
