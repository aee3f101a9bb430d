"""The store's high-water mark: the last committed change (epoch, sequence), kept outside the
store that someone without the key can write.

Every change writes a commit record whose sequence is one more than the one before
(``checkpoint.py``). After each commit the writer raises the mark to that sequence; a
controller starting on the store (``RecordStore.acquire_epoch``) refuses it, with
``StoreRolledBackError`` naming both numbers, when the store's authenticated sequence is
behind the mark.

Where the mark lives: for SQLite and Redis stores in the Ray GCS KV (namespace
``serveplane-high-water``), which only the cluster's jobs (trusted) can write; a ``ray://``
store *is* the GCS, so it needs no mark (whoever can write it is trusted anyway).

What it protects against: putting back an older snapshot of the whole store (a restored
backup, an old copy of the SQLite file, a Redis ``RESTORE``), commit record included. What it
does not: a replay of single records or blobs while the newest commit record is kept (each
still authenticates; that needs a digest of the whole state in the commit record, not done);
a rollback of the store and the GCS together (a whole-cluster restart loses the GCS, and the
mark with it: the first commit after that sets it again); a lag of one change when raising
the mark failed (logged; the next commit raises it).
"""

from __future__ import annotations

import hashlib
import json
import logging

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store.base import KVStore

logger = logging.getLogger(__name__)

GCS_URL = "ray://serveplane-high-water"
_RAISE_RETRIES = 5


class StoreRolledBackError(CorruptCheckpointError):
    """The store's last authenticated change is older than one this cluster saw committed."""


class HighWaterMark:
    """``(epoch, seq)`` of the last commit of one namespace of one store, in ``marks``."""

    def __init__(self, marks: KVStore, store_url: str, namespace: str) -> None:
        from serveplane.redact import redact_url

        self.marks = marks
        self.shown = f"{namespace!r} in {redact_url(store_url)}"
        digest = hashlib.sha256(f"{store_url}\0{namespace}".encode()).hexdigest()[:32]
        self.key = f"mark/{digest}"

    def __repr__(self) -> str:
        return f"<HighWaterMark {self.shown} in {self.marks.url}>"

    def read(self) -> tuple[int, int] | None:
        raw = self.marks.get(self.key)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return int(doc["epoch"]), int(doc["seq"])
        except (ValueError, KeyError, TypeError):
            logger.error("high-water mark %s is unreadable; it is set again by the next commit", self.key)
            return None

    def raise_to(self, epoch: int, seq: int) -> None:
        """Raise the mark to ``seq`` unless it is there already (never lowers it)."""
        value = json.dumps({"epoch": epoch, "seq": seq}).encode()
        for _ in range(_RAISE_RETRIES):
            raw = self.marks.get(self.key)
            current = self.read() if raw is not None else None
            if current is not None and current[1] >= seq:
                return
            if self.marks.compare_and_set(self.key, raw, value):
                return

    def forget(self) -> None:
        """Drop the mark: the operator restored an older snapshot on purpose."""
        self.marks.delete(self.key)

    def check(self, store_epoch: int, store_seq: int) -> None:
        mark = self.read()
        if mark is not None and store_seq < mark[1]:
            raise StoreRolledBackError(
                f"the store {self.shown} was rolled back: its last authenticated change is "
                f"sequence {store_seq} (epoch {store_epoch}), but this cluster saw sequence "
                f"{mark[1]} (epoch {mark[0]}) committed. Someone put back an older snapshot of it "
                "(or a backup was restored); refusing to start on it. If you restored it on "
                "purpose, run `serveplane forget-high-water-mark --kv-store URL` and start again")


def high_water_for(store_url: str, namespace: str) -> HighWaterMark | None:
    """The mark of a SQLite or Redis store, kept in the GCS (needs Ray initialized); None for
    stores whose writers are trusted anyway (``ray://``, ``memory://``)."""
    if not store_url.startswith(("sqlite://", "redis://")):
        return None
    import ray

    if not ray.is_initialized():
        return None  # no cluster, no GCS to keep it in (tools and tests outside Ray)
    from serveplane.kv_store.ray_kv import RayKVStore

    return HighWaterMark(RayKVStore(GCS_URL), store_url, namespace)
