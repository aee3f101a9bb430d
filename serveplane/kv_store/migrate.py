"""``serveplane migrate-state``: authenticate, once, the state the previous format wrote.

The previous format protected records with a plain SHA-256 that anyone who can write the
store can recompute, and stored blobs as raw bytes. A controller refuses both (never
trusting them silently); this migration is the one explicit way to bring them over, on the
operator's word that the store holds what serveplane wrote.

Invariants:

- only the previous *format* is migrated: a record whose checksum holds, a raw blob whose
  bytes hash to its name. Anything damaged, or authenticated under another key, is left as
  it is and listed in ``refused``: a migration never re-signs what another key signed;
- a namespace with nothing to migrate is not touched (no epoch is claimed, so a running
  controller keeps its namespace);
- otherwise the migration claims an epoch (a running controller is fenced out from then on,
  and must restart to load the migrated state), rolls back a change its predecessor left
  unfinished (its undo log re-sealed first, if the previous format wrote it), and writes
  every migrated record and blob in one fenced ``RecordStore.write``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store.auth import StateKey
from serveplane.kv_store.base import KVStore
from serveplane.kv_store.blobs import MAGIC, Blobs
from serveplane.kv_store.change_log import LOG_NAME
from serveplane.kv_store.checkpoint import RecordStore
from serveplane.kv_store.codec import RecordCodec, decode_legacy


@dataclass
class MigrationReport:
    namespace: str
    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> record
    blobs: dict[str, bytes] = field(default_factory=dict)                    # digest -> bytes
    already: int = 0                                                         # items authenticated
    refused: dict[str, str] = field(default_factory=dict)                    # store key -> why
    log_resealed: bool = False
    epoch: int | None = None                                                 # claimed to write

    def __repr__(self) -> str:
        return (f"<MigrationReport {self.namespace!r} [records: {len(self.records)}, blobs: "
                f"{len(self.blobs)}, already authenticated: {self.already}, refused: {len(self.refused)}]>")

    @property
    def needed(self) -> bool:
        return bool(self.records or self.blobs or self.log_resealed)


def plan_migration(store: KVStore, namespace: str, key: StateKey) -> MigrationReport:
    """What ``migrate_namespace`` would write; reads only."""
    codec = RecordCodec(key, namespace)
    records = RecordStore(store, namespace, key=key)
    report = MigrationReport(namespace)
    log_key = f"{namespace}/{LOG_NAME}"
    raw_log = store.get(log_key)
    if raw_log is not None and _legacy_payload(codec, LOG_NAME, raw_log, log_key, report) is not None:
        report.log_resealed = True
    prefix = f"{namespace}/records/"
    for primary_key in store.list(prefix):
        name = primary_key[len(prefix):]
        copies = [(primary_key, store.get(primary_key)), (records.backup_key(name), store.get(records.backup_key(name)))]
        if all(raw is not None and _authenticates(codec, name, raw, where) for where, raw in copies):
            report.already += 1
            continue
        payload, errors = None, MigrationReport(namespace)
        for where, raw in copies:
            if raw is None:
                continue
            if _authenticates(codec, name, raw, where):
                payload = codec.decode(name, raw, where)[1]
                break
            payload = _legacy_payload(codec, name, raw, where, errors)
            if payload is not None:
                break
        if payload is not None:
            report.records[name] = payload.get("record")
        elif primary_key in errors.refused:  # named by its primary, as the controller names it
            report.refused[primary_key] = errors.refused[primary_key]
    blobs = Blobs(store, namespace, key)
    for digest in sorted(blobs.digests()):
        stored = store.get(blobs.key(digest))
        if stored is None:
            continue
        try:
            blobs.open(digest, stored)
            report.already += 1
        except CorruptCheckpointError as exc:
            if not stored.startswith(MAGIC) and hashlib.sha256(stored).hexdigest() == digest:
                report.blobs[digest] = stored
            else:
                report.refused[blobs.key(digest)] = str(exc)
    return report


def migrate_namespace(store: KVStore, namespace: str, key: StateKey) -> MigrationReport:
    """Authenticate the previous format's records and blobs under ``key`` (see the module
    docstring); returns what was done."""
    report = plan_migration(store, namespace, key)
    if not report.needed:
        return report
    codec = RecordCodec(key, namespace)
    if report.log_resealed:
        log_key = f"{namespace}/{LOG_NAME}"
        raw = store.get(log_key)
        if raw is not None and not _authenticates(codec, LOG_NAME, raw, log_key):
            epoch, payload = decode_legacy(log_key, raw)
            store.compare_and_set(log_key, raw, codec.encode(LOG_NAME, payload, epoch))
    records = RecordStore(store, namespace, key=key)
    epoch = records.acquire_epoch()  # rolls back an unfinished change: plan again after it
    resealed, report = report.log_resealed, plan_migration(store, namespace, key)
    report.epoch, report.log_resealed = epoch, resealed
    if report.records or report.blobs:
        records.write(epoch, report.records, report.blobs)
    return report


def _authenticates(codec: RecordCodec, name: str, raw: bytes, where: str) -> bool:
    try:
        codec.decode(name, raw, where)
        return True
    except CorruptCheckpointError:
        return False


def _legacy_payload(codec: RecordCodec, name: str, raw: bytes, where: str,
                    report: MigrationReport) -> dict[str, Any] | None:
    """The payload of a previous-format document whose checksum holds, or None (noted in
    ``report.refused`` unless it authenticates already)."""
    try:
        return decode_legacy(where, raw)[1]
    except CorruptCheckpointError as legacy_error:
        try:
            codec.decode(name, raw, where)
        except CorruptCheckpointError as exc:
            # a damaged previous-format document says so; anything else says why it fails
            report.refused[where] = str(legacy_error) if "schema_version 1" in str(exc) else str(exc)
        return None
