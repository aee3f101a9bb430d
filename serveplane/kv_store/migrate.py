"""``serveplane migrate-state``: authenticate, once, the state the previous format wrote.

The previous format protected records with a plain SHA-256 that anyone who can write the
store can recompute, and stored blobs as raw bytes. A controller refuses both (never
trusting them silently); this migration is the one explicit way to bring them over, on the
operator's word that the store holds what serveplane wrote. That word is only worth what the
operator saw, so:

- **a guarded namespace is migrated item by item.** A namespace that already holds
  authenticated state or epoch claims has been run by this serveplane: a previous-format
  item in it may have been planted since by someone who can write the store but lacks the
  key. There the migration signs only the items the operator names (``approved``), each
  named by an id that fingerprints its content (``record:<name>#<sha256 of the payload, 16
  hex>``, ``blob:<digest>``), so what is signed is exactly what the dry run showed. Only a
  pristine previous-format namespace (no authenticated item, no epoch claim) is migrated
  whole;
- **an authenticated copy always wins**: a record with a copy that authenticates under the
  key is never replaced by its unauthenticated other copy;
- **a raw blob is signed only when a record names it** (its digest appears in the record):
  a record that authenticates (its content hash is then fixed by a key holder, so it needs
  no approval) or one this migration signs. A blob no record names is refused;
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
import json
import re
from dataclasses import dataclass, field
from typing import Any, Collection

from serveplane.exceptions import CorruptCheckpointError, InvalidInputError
from serveplane.kv_store.auth import StateKey
from serveplane.kv_store.base import KVStore
from serveplane.kv_store.blobs import MAGIC, Blobs
from serveplane.kv_store.change_log import LOG_NAME
from serveplane.kv_store.checkpoint import RecordStore
from serveplane.kv_store.codec import RecordCodec, canonical_json, decode_legacy
from serveplane.kv_store.epochs import EpochClaims

_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
SHOWN_CHARS = 400


@dataclass
class Item:
    """One thing the migration would sign: its id (what the operator names), what it is."""

    id: str
    shown: str                                   # what the operator checks before naming it
    safe: bool = False                           # needs no approval (a blob an authenticated record names)
    named_by: list[str] = field(default_factory=list)


@dataclass
class MigrationReport:
    namespace: str
    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> record
    blobs: dict[str, bytes] = field(default_factory=dict)                    # digest -> bytes
    already: int = 0                                                         # items authenticated
    refused: dict[str, str] = field(default_factory=dict)                    # store key -> why
    log_resealed: bool = False
    epoch: int | None = None                                                 # claimed to write
    guarded: str | None = None         # why each item must be named, or None (pristine namespace)
    items: list[Item] = field(default_factory=list)                          # every candidate
    # named ids that no longer matched after the migration rolled back an unfinished change
    changed_by_roll_back: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"<MigrationReport {self.namespace!r} [records: {len(self.records)}, blobs: "
                f"{len(self.blobs)}, already authenticated: {self.already}, refused: {len(self.refused)}"
                f"{', guarded' if self.guarded else ''}]>")

    @property
    def needed(self) -> bool:
        return bool(self.records or self.blobs or self.log_resealed)

    def unapproved(self) -> list[Item]:
        """Candidates a guarded namespace would not sign without the operator naming them."""
        return [item for item in self.items if not item.safe] if self.guarded else []


def record_item_id(name: str, payload: dict[str, Any]) -> str:
    return f"record:{name}#{hashlib.sha256(canonical_json(payload)).hexdigest()[:16]}"


def plan_migration(store: KVStore, namespace: str, key: StateKey,
                   approved: Collection[str] | None = None, *, pristine: bool = False) -> MigrationReport:
    """What ``migrate_namespace`` would write; reads only. In a guarded namespace (see the
    module docstring) only ``approved`` items (and blobs authenticated records name) are
    planned; every candidate is in ``items`` either way. ``pristine`` is the migration's own
    re-plan after its claim, of a namespace it found unguarded."""
    codec = RecordCodec(key, namespace)
    records = RecordStore(store, namespace, key=key)
    report = MigrationReport(namespace)
    log_key = f"{namespace}/{LOG_NAME}"
    raw_log = store.get(log_key)
    log_item: Item | None = None
    if raw_log is not None and _legacy_payload(codec, LOG_NAME, raw_log, log_key, report) is not None:
        log_item = Item(f"log:{LOG_NAME}#{hashlib.sha256(raw_log).hexdigest()[:16]}",
                        "an unfinished change of the previous format, to be re-sealed and rolled back")
        report.items.append(log_item)
    prefix = f"{namespace}/records/"
    legacy: dict[str, dict[str, Any]] = {}
    trusted_refs: set[str] = set()  # digests that authenticated records name
    for primary_key in store.list(prefix):
        name = primary_key[len(prefix):]
        copies = [(primary_key, store.get(primary_key)), (records.backup_key(name), store.get(records.backup_key(name)))]
        authentic = [codec.decode(name, raw, where)[1] for where, raw in copies
                     if raw is not None and _authenticates(codec, name, raw, where)]
        if authentic:  # never prefer an unauthenticated copy over an authenticated one
            report.already += 1
            trusted_refs |= _digests(authentic[0])
            continue
        payload, errors = None, MigrationReport(namespace)
        for where, raw in copies:
            if raw is not None:
                payload = _legacy_payload(codec, name, raw, where, errors)
                if payload is not None:
                    break
        if payload is not None:
            legacy[name] = payload
        elif primary_key in errors.refused:  # named by its primary, as the controller names it
            report.refused[primary_key] = errors.refused[primary_key]
    blobs = Blobs(store, namespace, key)
    raw_blobs: dict[str, bytes] = {}
    for digest in sorted(blobs.digests()):
        stored = store.get(blobs.key(digest))
        if stored is None:
            continue
        try:
            blobs.open(digest, stored)
            report.already += 1
        except CorruptCheckpointError as exc:
            if not stored.startswith(MAGIC) and hashlib.sha256(stored).hexdigest() == digest:
                raw_blobs[digest] = stored
            else:
                report.refused[blobs.key(digest)] = str(exc)
    claims = EpochClaims(store, namespace).highest()
    if (report.already or claims) and not pristine:
        report.guarded = (
            f"namespace {namespace!r} already holds authenticated state ({report.already} item(s)) "
            f"or epoch claims (highest {claims}): it has been run by this serveplane, so a "
            "previous-format item in it may have been planted by someone who can write the store "
            "without the state key")
    chosen = _choose(report, legacy, approved)
    for name in sorted(legacy):
        record_item = Item(record_item_id(name, legacy[name]), _show(legacy[name].get("record")))
        report.items.append(record_item)
    for digest, data in raw_blobs.items():
        named_by = sorted(n for n in legacy if digest in _digests(legacy[n]))
        item = Item(f"blob:{digest}", "", safe=digest in trusted_refs, named_by=named_by)
        item.shown = (f"{len(data)} bytes, named by " + (", ".join(named_by) or "")
                      + (("; " if named_by else "") + "an authenticated record" if item.safe else ""))
        if not item.safe and not named_by:
            report.refused[blobs.key(digest)] = (
                f"blob {blobs.key(digest)!r} is in the previous format but no record names it; "
                "not migrated (nothing would load it)")
            continue
        report.items.append(item)
        signed_by_record = any(n in chosen for n in named_by)
        if item.safe or (signed_by_record and _approved(report, item.id, approved)):
            report.blobs[digest] = data
    for name in chosen:
        report.records[name] = legacy[name].get("record")
    report.log_resealed = log_item is not None and _approved(report, log_item.id, approved)
    return report


def migrate_namespace(store: KVStore, namespace: str, key: StateKey,
                      approved: Collection[str] | None = None) -> MigrationReport:
    """Authenticate the previous format's records and blobs under ``key`` (see the module
    docstring); returns what was done. A guarded namespace with candidates the operator did
    not name, or a named id that is not a candidate, raises ``InvalidInputError`` before
    anything is written."""
    report = plan_migration(store, namespace, key, approved)
    _check_approval(report, approved)
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
    resealed, pristine = report.log_resealed, report.guarded is None
    report = plan_migration(store, namespace, key, approved, pristine=pristine)
    report.epoch, report.log_resealed = epoch, resealed
    still = {item.id for item in report.items}
    report.changed_by_roll_back = sorted(i for i in set(approved or ()) if i not in still and not i.startswith("log:"))
    if report.records or report.blobs:
        records.write(epoch, report.records, report.blobs)
    return report


def _choose(report: MigrationReport, legacy: dict[str, dict[str, Any]],
            approved: Collection[str] | None) -> list[str]:
    return sorted(name for name in legacy
                  if _approved(report, record_item_id(name, legacy[name]), approved))


def _approved(report: MigrationReport, item_id: str, approved: Collection[str] | None) -> bool:
    return report.guarded is None or item_id in (approved or ())


def _check_approval(report: MigrationReport, approved: Collection[str] | None) -> None:
    known = {item.id for item in report.items}
    unknown = sorted(set(approved or ()) - known)
    if unknown:
        raise InvalidInputError(
            f"item {unknown[0]} is not among what this migration would sign in "
            f"{report.namespace!r} (it is gone, or its content changed since you looked); run "
            "`serveplane migrate-state --dry-run` again and name the ids it lists")
    missing = [item.id for item in report.unapproved() if item.id not in set(approved or ())]
    if report.guarded and missing and not approved:
        raise InvalidInputError(
            f"{report.guarded}; refusing to sign {len(missing)} unauthenticated item(s) wholesale. "
            "Run `serveplane migrate-state --dry-run`, check what each item holds, and name each "
            f"item you checked with --item (e.g. --item {missing[0]})")


def _digests(payload: Any) -> set[str]:
    """Every blob digest a record names (any 64-hex string in it)."""
    return set(_DIGEST.findall(json.dumps(payload)))


def _show(record: Any) -> str:
    text = json.dumps(record, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"... ({len(text)} chars)"


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
