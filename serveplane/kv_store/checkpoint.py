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
        for _ in range(MAX_CAS_RETRIES):
            raw = self.store.get(self.epoch_key)
            epoch = (int(raw) if raw is not None else 0) + 1
            if self.store.compare_and_set(self.epoch_key, raw, str(epoch).encode()):
                break
        else:
            raise StaleEpochError(f"could not take a new epoch on {self.epoch_key!r}: too much contention")
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
