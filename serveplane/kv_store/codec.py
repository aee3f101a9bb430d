"""The checkpoint codec: versioned, authenticated JSON.

Format (schema version 2), compact JSON with sorted keys::

    {"epoch": <int >= 0>, "mac": <hex HMAC-SHA256>, "payload": <object>, "schema_version": 2}

Canonical JSON is ``sort_keys=True, separators=(",", ":"), ensure_ascii=False``, UTF-8. The
MAC is the state key's HMAC (``auth.py``) over the tag ``serveplane/record/v2``, the
namespace, the record's name and the canonical JSON of ``{epoch, payload, schema_version}``:
it authenticates the whole document and binds it to its name, so a record copied to another
name (or namespace) fails like a changed one.

Invariants: ``RecordCodec.decode`` either returns the whole payload exactly as encoded or
raises ``CorruptCheckpointError`` naming the store key and what is wrong (bad JSON, missing
fields, unknown schema version, a MAC that fails: ``StateAuthenticationError``); it never
returns partial data. Schema version 1 (a plain SHA-256 checksum, which anyone who can write
the store can recompute) is refused as unauthenticated; only ``decode_legacy`` reads it, for
``serveplane migrate-state``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from serveplane.exceptions import CorruptCheckpointError, InvalidInputError, StateAuthenticationError
from serveplane.kv_store.auth import StateKey

SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSION = 1
FIELDS = ("epoch", "mac", "payload", "schema_version")
LEGACY_FIELDS = ("checksum", "epoch", "payload", "schema_version")
_TAG = b"serveplane/record/v2"


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that MACs are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


class RecordCodec:
    """Encodes and decodes the records of one namespace under one state key."""

    def __init__(self, key: StateKey, namespace: str) -> None:
        if not isinstance(key, StateKey):
            raise InvalidInputError(
                f"state key is a {type(key).__name__}; records need a serveplane StateKey "
                "(see serveplane.state_key.resolve_state_key)")
        self.key = key
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<RecordCodec {self.namespace!r} under {self.key.describe()}>"

    def _mac(self, name: str, body: bytes) -> bytes:
        return self.key.mac(_TAG, self.namespace.encode(), name.encode(), body)

    def encode(self, name: str, payload: dict[str, Any], epoch: int) -> bytes:
        """The document for record ``name`` holding ``payload``, written by ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InvalidInputError(f"checkpoint epoch {epoch!r} is invalid; it must be an int >= 0")
        if not isinstance(payload, dict):
            raise InvalidInputError(
                f"checkpoint payload is {'None' if payload is None else 'a ' + type(payload).__name__}; "
                "it must be a dict of JSON values")
        signed = {"epoch": epoch, "payload": payload, "schema_version": SCHEMA_VERSION}
        try:
            body = canonical_json(signed)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"checkpoint payload is not JSON-serializable ({exc}); use dicts, lists, strings, "
                "finite numbers, booleans and None") from None
        return canonical_json({**signed, "mac": self._mac(name, body).hex()})

    def decode(self, name: str, data: bytes, where: str) -> tuple[int, dict[str, Any]]:
        """``(epoch, payload)`` of record ``name`` stored at ``where``, or
        ``CorruptCheckpointError`` naming ``where`` and what is wrong."""
        doc = _load(where, data)
        version = doc.get("schema_version")
        if version == LEGACY_SCHEMA_VERSION and not isinstance(version, bool):
            raise StateAuthenticationError(
                f"checkpoint {where!r} fails authentication: it was written by the previous, "
                "unauthenticated format (schema_version 1), which anyone who can write the store "
                "can forge. If this namespace predates authenticated state, check it with "
                "`serveplane migrate-state --dry-run` and sign what you checked; in a namespace that "
                "already ran authenticated it may be planted, so it stays refused until then "
                f"(under {self.key.describe()})")
        _check_fields(where, doc, FIELDS)
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise CorruptCheckpointError(
                f"checkpoint {where!r} has unknown schema_version {version!r}; this serveplane "
                f"reads version {SCHEMA_VERSION}")
        epoch, payload = _epoch_and_payload(where, doc)
        mac = doc["mac"]
        try:
            body = canonical_json({"epoch": epoch, "payload": payload, "schema_version": version})
            given = bytes.fromhex(mac) if isinstance(mac, str) else b""
        except ValueError:  # NaN/Infinity crept in, or a MAC that is not hex: never encoded
            body, given = b"", b""
        if not self.key.verify(given, _TAG, self.namespace.encode(), name.encode(), body):
            raise StateAuthenticationError(
                f"checkpoint {where!r} fails authentication under {self.key.describe()}: it was "
                "changed by something that does not hold that key, or written under another key; "
                "refusing to load it")
        return epoch, payload


def decode_legacy(where: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """``(epoch, payload)`` of a schema-version-1 checkpoint whose checksum holds: what
    ``serveplane migrate-state`` reads, once, on the operator's say-so. Never used to load."""
    doc = _load(where, data)
    _check_fields(where, doc, LEGACY_FIELDS)
    version = doc["schema_version"]
    if isinstance(version, bool) or version != LEGACY_SCHEMA_VERSION:
        raise CorruptCheckpointError(
            f"checkpoint {where!r} has schema_version {version!r}; only version 1 is migrated")
    epoch, payload = _epoch_and_payload(where, doc)
    checksum = doc["checksum"]
    try:
        actual: str | None = hashlib.sha256(canonical_json(payload)).hexdigest()
    except ValueError:
        actual = None
    if actual != checksum:
        raise CorruptCheckpointError(
            f"checkpoint {where!r} fails its checksum (stored {str(checksum)[:12]!r}, payload hashes "
            f"to {str(actual)[:12]!r}); refusing to migrate it")
    return epoch, payload


def _load(where: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptCheckpointError(
            f"checkpoint {where!r} is not valid JSON ({exc}); refusing to load it") from None
    if not isinstance(doc, dict):
        raise CorruptCheckpointError(
            f"checkpoint {where!r} is a JSON {type(doc).__name__}, not an object; refusing to load it")
    return doc


def _check_fields(where: str, doc: dict[str, Any], fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if f not in doc]
    if missing:
        raise CorruptCheckpointError(
            f"checkpoint {where!r} lacks {', '.join(missing)}; a checkpoint has {', '.join(fields)}")


def _epoch_and_payload(where: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    epoch, payload = doc["epoch"], doc["payload"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CorruptCheckpointError(f"checkpoint {where!r} has epoch {epoch!r}; it must be an int >= 0")
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(
            f"checkpoint {where!r} has a payload of type {type(payload).__name__}; it must be an object")
    return epoch, payload
