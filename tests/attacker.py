"""What someone who can write the state store, but does not hold the state key, would do:
plant a code blob and point a record at it, recomputing the record's checksum in the plain
format that serveplane wrote before records were authenticated.

``evil_pickle(marker)`` is a pickle that creates the file ``marker`` when it is unpickled, so a
test can tell whether any process ever loaded it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any, Callable

from serveplane.kv_store import KVStore


class _CreatesFile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def evil_pickle(marker: str) -> bytes:
    return pickle.dumps(_CreatesFile(marker))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plain_document(payload: dict[str, Any], epoch: int) -> bytes:
    """A record in the previous format: its checksum is a SHA-256 anyone can recompute."""
    return _canonical({"checksum": hashlib.sha256(_canonical(payload)).hexdigest(), "epoch": epoch,
                       "payload": payload, "schema_version": 1})


def plant_blob(store: KVStore, namespace: str, data: bytes) -> str:
    """Store ``data`` as a blob the way the previous format did (raw bytes under its hash)."""
    digest = hashlib.sha256(data).hexdigest()
    store.put(f"{namespace}/blob/{digest}", data)
    return digest


def rewrite_record(store: KVStore, namespace: str, name: str,
                   change: Callable[[dict[str, Any]], None]) -> None:
    """Read record ``name`` without checking anything, apply ``change`` to it, and write it
    back to its primary and its copy with a recomputed checksum."""
    doc = json.loads(store.get(f"{namespace}/records/{name}") or b"{}")
    record = doc["payload"]["record"]
    change(record)
    forged = plain_document({"record": record}, int(doc.get("epoch", 1)))
    store.put(f"{namespace}/records/{name}", forged)
    store.put(f"{namespace}/backup/{name}", forged)


def to_previous_format(store: KVStore, namespace: str) -> int:
    """Rewrite every record and blob of ``namespace`` as the previous format wrote them
    (what an upgrade finds in the store); returns how many items changed."""
    from serveplane.kv_store.blobs import HEADER_BYTES, MAGIC

    changed = 0
    for prefix in (f"{namespace}/records/", f"{namespace}/backup/"):
        for key in store.list(prefix):
            doc = json.loads(store.get(key) or b"{}")
            store.put(key, plain_document(doc["payload"], doc["epoch"]))
            changed += 1
    for key in store.list(f"{namespace}/blob/"):
        stored = store.get(key) or b""
        if stored.startswith(MAGIC):
            store.put(key, stored[HEADER_BYTES:])
            changed += 1
    return changed
