"""Persistence for the controller: one change, one atomic, fenced store write.

Invariants:
- a ``Change`` holds every record and blob one decision touched; ``Persistence.write``
  sends it to the store as one transaction (``RecordStore.write``), so a change is on the
  store entirely or not at all, and memory is committed only after it returned;
- a blob is stored in the same transaction as the first record that names it, and deleted
  in the same transaction as the last record that stops naming it (``BlobRefs``), so no
  code blob leaks and none is deleted while a record needs it;
- store I/O never runs on the controller's event loop: it goes through ``run_io`` (a
  one-thread executor in production, so writes keep their order; inline in the simulator);
- a write refused for a stale epoch marks this controller stale for good: it never writes
  or acts again;
- a write whose store call raised is resolved by ``RecordStore.write`` reading its commit
  record back before anything is told: it returns only if the change is in the store and
  raises only if it is not (and never will be). When even that read fails the outcome is
  unknown (``CommitUnknownError``): memory stays as it was, and the next write first asks
  the store again; if the change turns out written after all, memory is behind the store,
  so this controller stops (as if stale) and a restart reloads the truth;
- a record or blob the store holds but that fails authentication (or is damaged) is never
  returned: ``refused`` lists it for ``get_status()`` until a write replaces or deletes it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from serveplane.exceptions import CorruptCheckpointError, StaleEpochError
from serveplane.kv_store import RecordStore
from serveplane.kv_store.checkpoint import CommitUnknownError

logger = logging.getLogger(__name__)

T = TypeVar("T")
IORunner = Callable[..., Awaitable[Any]]

BLOB_CACHE_BYTES = 256 * 1024 * 1024


def thread_runner(name: str) -> tuple[IORunner, ThreadPoolExecutor]:
    """Run blocking calls on one dedicated thread, in submission order."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return run, pool


async def inline_runner(fn: Callable[..., T], *args: Any) -> T:
    """For the simulator and unit tests: run the call right here (deterministic)."""
    return fn(*args)


@dataclass
class Change:
    """Every record (``None``: delete) and blob (``None``: delete) one decision touched."""

    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    blobs: dict[str, bytes | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.records or self.blobs)


class BlobRefs:
    """How many committed records name each blob."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()

    def released(self, removed: Iterable[str], added: Iterable[str]) -> set[str]:
        """Digests no record would name once ``removed`` references give way to ``added``."""
        scratch = collections.Counter({d: self._counts[d] for d in removed})
        scratch.subtract(removed)
        for digest in added:
            scratch[digest] += 1
        return {d for d, n in scratch.items() if n <= 0 and d in self._counts}

    def apply(self, removed: Iterable[str], added: Iterable[str]) -> None:
        """O(references changed), whatever the number of blobs."""
        for digest in added:
            self._counts[digest] += 1
        for digest in removed:
            self._counts[digest] -= 1
            if self._counts[digest] <= 0:
                del self._counts[digest]

    def names(self, digest: str) -> bool:
        """Some committed record names this blob."""
        return digest in self._counts

    def referenced(self) -> set[str]:
        return set(self._counts)


class RefusedState:
    """What the store holds but this controller refused to load: records (by name) and blobs
    (by digest, the last ``MAX_BLOBS``), each with its store key and why."""

    MAX_BLOBS = 100

    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self._record_keys: dict[str, str] = {}
        self._blobs: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"<RefusedState [records: {len(self.records)}, blobs: {len(self._blobs)}]>"

    def record(self, name: str, key: str, why: str) -> None:
        self.records[name] = why
        self._record_keys[name] = key

    def blob(self, digest: str, key: str, why: str) -> None:
        self._blobs[digest] = (key, why)
        self._blobs.move_to_end(digest)
        while len(self._blobs) > self.MAX_BLOBS:
            self._blobs.popitem(last=False)

    def written(self, change: Change) -> None:
        """``change`` is in the store: what it wrote or deleted is no longer refused."""
        for name in change.records:
            self.records.pop(name, None)
            self._record_keys.pop(name, None)
        for digest in change.blobs:
            self._blobs.pop(digest, None)

    def report(self) -> list[dict[str, str]]:
        out = [{"key": self._record_keys[name], "error": why} for name, why in self.records.items()]
        out += [{"key": key, "error": why} for key, why in self._blobs.values()]
        return sorted(out, key=lambda entry: entry["key"])


class Persistence:
    def __init__(self, store: RecordStore, epoch: int, run_io: IORunner) -> None:
        self.store = store
        self.epoch = epoch
        self._run_io = run_io
        self.stale: StaleEpochError | None = None
        self.refs = BlobRefs()
        self.refused = RefusedState()
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._cache_bytes = 0

    def _mark_stale(self, exc: StaleEpochError) -> None:
        if self.stale is None:
            logger.error("controller epoch %d is stale; it stops acting: %s", self.epoch, exc)
        self.stale = exc

    async def write(self, change: Change) -> None:
        """Persist ``change`` atomically, or raise with nothing written."""
        if self.stale is not None:
            raise self.stale
        if not change:
            return
        if self.store.unresolved is not None:
            await self._resolve_unknown()
        try:
            await self._run_io(self.store.write, self.epoch, change.records, change.blobs)
        except StaleEpochError as exc:
            self._mark_stale(exc)
            raise
        except CommitUnknownError as exc:
            logger.error("controller epoch %d: a write's outcome is unknown; memory is left as it "
                         "was and the store is asked again before the next write: %s", self.epoch, exc)
            raise
        self.refused.written(change)
        for digest, data in change.blobs.items():
            if data is None:
                self._forget(digest)
            else:
                self._remember(digest, data)

    async def _resolve_unknown(self) -> None:
        pending = self.store.unresolved
        applied = await self._run_io(self.store.resolve)
        if applied is None:
            raise CommitUnknownError(
                self.store.store.url, "write",
                f"an earlier change ({pending.txn if pending else '?'}) has an unknown outcome and the "
                "store still cannot say; nothing more is written until it can")
        if applied:
            self._mark_stale(StaleEpochError(
                f"change {pending.txn if pending else '?'} of epoch {self.epoch}, reported as not "
                "written when the store could not be read, is in the store: this controller's "
                "memory is behind its store; restart the controller (Client.restart_controller) "
                "to load it"))
            raise self.stale  # type: ignore[misc]

    async def check_epoch(self) -> bool:
        """True while this controller still owns its namespace (one store read)."""
        if self.stale is not None:
            return False
        try:
            await self._run_io(self.store.check_epoch, self.epoch)
        except StaleEpochError as exc:
            self._mark_stale(exc)
            return False
        return True

    async def stored_blobs(self) -> set[str]:
        """Every blob digest in the store, named by a loaded record or not."""
        return await self._run_io(self.store.blob_digests)

    async def blob(self, digest: str) -> bytes:
        data = self._cache.get(digest)
        if data is None:
            try:
                data = await self._run_io(self.store.get_blob, digest)
            except CorruptCheckpointError as exc:
                logger.error("refused blob %s: %s", digest, exc)
                self.refused.blob(digest, self.store.blob_key(digest), str(exc))
                raise
            self._remember(digest, data)
        else:
            self._cache.move_to_end(digest)
        return data

    def _remember(self, digest: str, data: bytes) -> None:
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return
        self._cache[digest] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > BLOB_CACHE_BYTES and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted)

    def _forget(self, digest: str) -> None:
        data = self._cache.pop(digest, None)
        if data is not None:
            self._cache_bytes -= len(data)
