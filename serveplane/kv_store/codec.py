"""The checkpoint codec: versioned, checksummed JSON.

Format (schema version 1), compact JSON with sorted keys::

    {"checksum": <sha256 hex of the payload's canonical JSON>, "epoch": <int >= 0>,
     "payload": <object>, "schema_version": 1}

Canonical JSON is ``sort_keys=True, separators=(",", ":"), ensure_ascii=False``, UTF-8.

Invariants: ``decode_checkpoint`` either returns the whole payload exactly as encoded or
raises ``CorruptCheckpointError`` naming the key and what is wrong (bad JSON, missing fields,
unknown schema version, checksum mismatch); it never returns partial data. The checksum
covers the payload only; the epoch records who wrote it (fencing does not rely on it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from serveplane.exceptions import CorruptCheckpointError, InvalidInputError

SCHEMA_VERSION = 1
FIELDS = ("checksum", "epoch", "payload", "schema_version")


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that checksums are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def encode_checkpoint(payload: dict[str, Any], epoch: int) -> bytes:
    """Encode a checkpoint of ``payload`` written by ``epoch``."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InvalidInputError(f"checkpoint epoch {epoch!r} is invalid; it must be an int >= 0")
    if not isinstance(payload, dict):
        raise InvalidInputError(
            f"checkpoint payload is {'None' if payload is None else 'a ' + type(payload).__name__}; "
            "it must be a dict of JSON values")
    try:
        body = canonical_json(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"checkpoint payload is not JSON-serializable ({exc}); use dicts, lists, strings, "
            "finite numbers, booleans and None") from None
    doc = {"schema_version": SCHEMA_VERSION, "epoch": epoch,
           "checksum": hashlib.sha256(body).hexdigest(), "payload": payload}
    return canonical_json(doc)


def decode_checkpoint(key: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """``(epoch, payload)`` of what ``encode_checkpoint`` wrote under ``key``, or
    ``CorruptCheckpointError`` naming ``key`` and what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptCheckpointError(
            f"checkpoint {key!r} is not valid JSON ({exc}); refusing to load it") from None
    if not isinstance(doc, dict):
        raise CorruptCheckpointError(
            f"checkpoint {key!r} is a JSON {type(doc).__name__}, not an object; refusing to load it")
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise CorruptCheckpointError(
            f"checkpoint {key!r} lacks {', '.join(missing)}; a checkpoint has {', '.join(FIELDS)}")
    version = doc["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise CorruptCheckpointError(
            f"checkpoint {key!r} has unknown schema_version {version!r}; this serveplane "
            f"reads version {SCHEMA_VERSION}")
    epoch, payload, checksum = doc["epoch"], doc["payload"], doc["checksum"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CorruptCheckpointError(f"checkpoint {key!r} has epoch {epoch!r}; it must be an int >= 0")
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(
            f"checkpoint {key!r} has a payload of type {type(payload).__name__}; it must be an object")
    try:
        actual = hashlib.sha256(canonical_json(payload)).hexdigest()
    except ValueError:  # NaN/Infinity crept in: never produced by encode
        actual = None
    if actual != checksum:
        raise CorruptCheckpointError(
            f"checkpoint {key!r} fails its checksum (stored {str(checksum)[:12]!r}, payload hashes "
            f"to {str(actual)[:12]!r}); refusing to load it")
    return epoch, payload
