"""Content-addressed blobs (user code, routers) under ``<ns>/blob/<sha256 hex>``.

Invariants: a blob's key names the SHA-256 of its bytes, so writing one needs no fence (any
writer writes the same bytes) and reading one verifies it; a missing or damaged blob raises
``CorruptCheckpointError`` naming its key and is never returned.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from serveplane.exceptions import CorruptCheckpointError, InvalidInputError
from serveplane.kv_store.base import Changes, KVStore

_HEX = frozenset("0123456789abcdef")


def blob_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Blobs:
    def __init__(self, store: KVStore, namespace: str) -> None:
        self.store = store
        self.prefix = f"{namespace}/blob/"

    def __repr__(self) -> str:
        from serveplane.redact import redact_url

        return f"<Blobs {self.prefix!r} on {redact_url(self.store.url)}>"

    def key(self, digest: str) -> str:
        return self.prefix + digest

    def put(self, data: bytes) -> str:
        """Store ``data`` once under its digest (put-if-absent) and return the digest."""
        data = bytes(data)
        digest = blob_digest(data)
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
        if blob_digest(data) != digest:
            raise CorruptCheckpointError(f"blob {key!r} fails its content hash; refusing to load it")
        return data

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
