"""The redo log: how a multi-key change survives a crash on a store whose ``transact`` is not
atomic (``atomic_transactions`` false: the Ray GCS KV).

``<ns>/txn`` holds at most one change: a checkpoint-codec document (so checksummed) whose
epoch is the writer's and whose payload is ``{"writes": {key: base64 value, or null to
delete}}``. A writer puts it before the change's first key and deletes it after the last, so
while it exists it names every key of a change that may be half applied. Applying it again is
harmless (it sets every key to a fixed value), which is all a redo needs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store.base import Changes, KVStore
from serveplane.kv_store.codec import decode_checkpoint, encode_checkpoint


class RedoLog:
    def __init__(self, store: KVStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self.key = f"{namespace}/txn"

    def __repr__(self) -> str:
        return f"<RedoLog {self.key!r} on {self.store.url}>"

    def write(self, epoch: int, writes: Changes) -> None:
        encoded = {key: None if value is None else base64.b64encode(value).decode("ascii")
                   for key, value in writes.items()}
        self.store.put(self.key, encode_checkpoint({"writes": encoded}, epoch))

    def read(self) -> tuple[int, Changes] | None:
        """``(epoch, writes)`` of the logged change, or ``None`` when none is logged; a damaged
        log raises ``CorruptCheckpointError`` naming its key."""
        raw = self.store.get(self.key)
        if raw is None:
            return None
        try:
            epoch, payload = decode_checkpoint(self.key, raw)
        except CorruptCheckpointError as exc:
            raise self._corrupt(f"is damaged ({exc})") from None
        return epoch, self._decode_writes(payload.get("writes"))

    def clear(self) -> None:
        self.store.delete(self.key)

    def _decode_writes(self, writes: Any) -> Changes:
        if not isinstance(writes, dict):
            raise self._corrupt("has no 'writes' object")
        out: Changes = {}
        for key, value in writes.items():
            if not key.startswith(self.namespace + "/"):
                raise self._corrupt(f"writes key {key!r}, outside its namespace")
            if value is None:
                out[key] = None
                continue
            try:
                out[key] = base64.b64decode(value, validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise self._corrupt(f"holds a value for {key!r} that is not base64") from None
        return out

    def _corrupt(self, what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"redo log {self.key!r} {what}; the change it describes cannot be completed. Delete "
            f"{self.key!r} to start without it, then check the records it names")
