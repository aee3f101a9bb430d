"""Content-addressed, authenticated blobs (user code, routers) under ``<ns>/blob/<sha256 hex>``.

A stored blob is ``b"SPB\\x02"``, then the state key's HMAC-SHA256 (32 bytes) over the tag
``serveplane/blob/v2``, the namespace and the digest, then the blob's bytes.

Invariants: a blob's key names the SHA-256 of its bytes, so writing one needs no fence (any
writer writes the same bytes) and reading one verifies it; its MAC says a holder of the state
key stored that digest in this namespace, so a blob planted by anyone else (the previous,
unsealed format included) is refused. A missing, damaged or unauthenticated blob raises
``CorruptCheckpointError`` naming its key and is never returned, so never unpickled.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from serveplane.exceptions import CorruptCheckpointError, InvalidInputError, StateAuthenticationError
from serveplane.kv_store.auth import MAC_BYTES, StateKey
from serveplane.kv_store.base import Changes, KVStore

_HEX = frozenset("0123456789abcdef")
MAGIC = b"SPB\x02"
_TAG = b"serveplane/blob/v2"
HEADER_BYTES = len(MAGIC) + MAC_BYTES


def blob_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Blobs:
    def __init__(self, store: KVStore, namespace: str, key: StateKey) -> None:
        self.store = store
        self.namespace = namespace
        self.prefix = f"{namespace}/blob/"
        self._key = key

    def __repr__(self) -> str:
        from serveplane.redact import redact_url

        return f"<Blobs {self.prefix!r} on {redact_url(self.store.url)} under {self._key.describe()}>"

    def key(self, digest: str) -> str:
        return self.prefix + digest

    def seal(self, digest: str, data: bytes) -> bytes:
        """What the store holds for blob ``digest`` with these bytes."""
        return MAGIC + self._key.mac(_TAG, self.namespace.encode(), digest.encode()) + data

    def open(self, digest: str, stored: bytes) -> bytes:
        """The blob's bytes from what the store holds, verified; else ``CorruptCheckpointError``."""
        key = self.key(digest)
        if not stored.startswith(MAGIC) or len(stored) < HEADER_BYTES:
            raise StateAuthenticationError(
                f"blob {key!r} fails authentication: it carries no MAC (written by the previous, "
                "unauthenticated format, or by something that does not hold the state key); if this "
                "namespace predates authenticated state, check it with `serveplane migrate-state "
                "--dry-run`; "
                "refusing to load it")
        mac, data = stored[len(MAGIC):HEADER_BYTES], stored[HEADER_BYTES:]
        if not self._key.verify(mac, _TAG, self.namespace.encode(), digest.encode()):
            raise StateAuthenticationError(
                f"blob {key!r} fails authentication under {self._key.describe()}: it was stored by "
                "something that does not hold that key, or under another key; refusing to load it")
        if blob_digest(data) != digest:
            raise CorruptCheckpointError(f"blob {key!r} fails its content hash; refusing to load it")
        return data

    def put(self, data: bytes) -> str:
        """Store ``data`` once under its digest (put-if-absent) and return the digest."""
        data = bytes(data)
        digest = blob_digest(data)
        key, sealed = self.key(digest), self.seal(digest, data)
        if not self.store.compare_and_set(key, None, sealed):
            existing = self.store.get(key)
            if existing != sealed:  # a damaged or planted copy: the content hash says what it must be
                self.store.compare_and_set(key, existing, sealed)
        return digest

    def get(self, digest: str) -> bytes:
        key = self.key(digest)
        stored = self.store.get(key)
        if stored is None:
            raise CorruptCheckpointError(f"blob {key!r} named by the checkpoint is missing")
        return self.open(digest, stored)

    def digests(self) -> set[str]:
        return {key[len(self.prefix):] for key in self.store.list(self.prefix)}

    def writes(self, blobs: Mapping[str, bytes | None]) -> Changes:
        """The store writes for ``{digest: bytes to store, or None to delete}``, validated."""
        out: Changes = {}
        for digest, data in blobs.items():
            _check_digest(digest)
            if data is not None:
                data = _check_bytes(digest, data)
                if blob_digest(data) != digest:
                    raise InvalidInputError(
                        f"blob {digest[:12]}... does not hash to its name (its bytes hash to "
                        f"{blob_digest(data)[:12]}...); name each blob by the sha256 hex of its bytes")
                data = self.seal(digest, data)
            out[self.key(digest)] = data
        return out


def _check_digest(digest: Any) -> None:
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
        raise InvalidInputError(
            f"blob name {digest!r} is invalid; blobs are named by the sha256 hex digest of their "
            "bytes (64 lowercase hex characters)")


def _check_bytes(digest: str, data: Any) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(
            f"blob {digest[:12]}... is a {type(data).__name__}; blobs must be bytes (None deletes)")
    return bytes(data)
