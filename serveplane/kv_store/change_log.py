"""The undo log: how a multi-key change stays all-or-nothing on a store whose ``transact`` is
not atomic (``atomic_transactions`` false: the Ray GCS KV).

``<ns>/txn`` holds at most one change: a checkpoint-codec document (so authenticated under
the state key, as the record named ``txn``: a forged log is refused, never replayed) whose
epoch is the writer's and whose payload is ``{"before": {key: value}, "after": {key: value}}``
(values base64, or null for "absent"). A writer puts it before the change's first key and
deletes it after the last, so while it exists it names every key of a change that may be
half applied, and what each key held before.

A logged change is never completed, only rolled back: its writer did not return (a crash),
or returned an error. Either way no caller was told it happened, so undoing it keeps the
rule "a write that did not return success never takes effect". A key is restored only if it
still holds the change's value (a later writer's value is left alone), and a blob the change
added is never deleted by a roll-back (blobs are content-addressed; one that no record names
is collected by the controller), so a roll-back can never remove data a newer change needs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from serveplane.exceptions import CorruptCheckpointError
from serveplane.kv_store.base import Changes, KVStore
from serveplane.kv_store.codec import RecordCodec


def _encode(values: Changes) -> dict[str, str | None]:
    return {key: None if value is None else base64.b64encode(value).decode("ascii")
            for key, value in values.items()}


LOG_NAME = "txn"


class ChangeLog:
    def __init__(self, store: KVStore, codec: RecordCodec) -> None:
        self.store = store
        self.namespace = codec.namespace
        self.key = f"{self.namespace}/{LOG_NAME}"
        self._codec = codec
        self._blob_prefix = f"{self.namespace}/blob/"

    def __repr__(self) -> str:
        from serveplane.redact import redact_url

        return f"<ChangeLog {self.key!r} on {redact_url(self.store.url)}>"

    def write(self, epoch: int, before: Changes, after: Changes) -> None:
        self.store.put(self.key, self._codec.encode(
            LOG_NAME, {"before": _encode(before), "after": _encode(after)}, epoch))

    def read(self) -> tuple[int, Changes, Changes] | None:
        """``(epoch, before, after)`` of the logged change, or ``None`` when none is logged; a
        damaged log raises ``CorruptCheckpointError`` naming its key."""
        raw = self.store.get(self.key)
        if raw is None:
            return None
        try:
            epoch, payload = self._codec.decode(LOG_NAME, raw, self.key)
        except CorruptCheckpointError as exc:
            raise self._corrupt(f"is damaged ({exc})", type(exc)) from None
        before, after = self._decode(payload.get("before")), self._decode(payload.get("after"))
        if set(before) != set(after):
            raise self._corrupt("names different keys before and after")
        return epoch, before, after

    def undo_writes(self, before: Changes, after: Changes) -> Changes:
        """What restores the logged keys (blob puts excluded: never delete a blob here)."""
        return {key: value for key, value in before.items()
                if not (key.startswith(self._blob_prefix) and value is None and after[key] is not None)}

    def clear(self) -> None:
        self.store.delete(self.key)

    def _decode(self, values: Any) -> Changes:
        if not isinstance(values, dict):
            raise self._corrupt("has no 'before' and 'after' objects")
        out: Changes = {}
        for key, value in values.items():
            if not key.startswith(self.namespace + "/"):
                raise self._corrupt(f"names key {key!r}, outside its namespace")
            if value is None:
                out[key] = None
                continue
            try:
                out[key] = base64.b64decode(value, validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise self._corrupt(f"holds a value for {key!r} that is not base64") from None
        return out

    def _corrupt(self, what: str, kind: type[CorruptCheckpointError] = CorruptCheckpointError
                 ) -> CorruptCheckpointError:
        return kind(
            f"change log {self.key!r} {what}; the change it describes cannot be rolled back. "
            f"Delete {self.key!r} to start without it, then check the records it names")
