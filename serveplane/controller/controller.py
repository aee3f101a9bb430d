"""The controller actor: the one owner of hard state, and its RPC surface (the rollout
RPCs are in ``rollout_rpcs.py``, router reports and metrics in ``metrics_rpcs.py``).

Invariants:
- every RPC that changes state validates fully, builds the ``Change`` (records, goals and
  blobs), persists it in one atomic, fenced write, and only then commits memory and
  notifies long-poll; a refused or failed call leaves memory and store as they were. No
  RPC awaits a replica actor.
- ``self._lock`` serializes those changes and the control step's decide-persist-commit
  (``reconciler.py``); replica actions run outside it.
- a controller whose epoch is stale (a successor started) never writes, never acts, and
  stops its loop; its RPCs raise ``StaleEpochError``.
- recovery reads only live records (no tombstones, no history), so its time depends on
  the state that exists, not on how many calls made it.
- state is loaded only if it authenticates under the state key (``kv_store/auth.py``). A
  record or blob that does not is refused (never unpickled, never sent to a replica or a
  router) and reported in ``get_status()["refused"]``; while a refused record is in the
  store, nothing that might be its own is destroyed: no orphan sweep, no blob collection
  at recovery (it may be state awaiting ``serveplane migrate-state``, or a lost key).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hashlib
import json
import logging
import math
import time
from typing import Any, Callable

from serveplane import placement
from serveplane.backend_state import BackendRecord, BackendState, BackendStateManager, ReplicaActorWrapper
from serveplane.backend_state.replica import ReplicaState
from serveplane.config import parse_backend_config, validate_actor_options
from serveplane.controller.actors import ActorDirectory, RayActorDirectory
from serveplane.controller.autoscaler import Autoscaler
from serveplane.controller.clocks import ClockLike, as_clock
from serveplane.controller.goals import FINISHED_RECORD, Goal, GoalManager
from serveplane.controller.persistence import (
    Change,
    IORunner,
    Persistence,
    thread_runner,
)
from serveplane.controller.dashboard_rpcs import DashboardPublisher
from serveplane.controller.metrics_rpcs import MetricsRPCs
from serveplane.controller.reconciler import Reconciler, StepReport
from serveplane.controller.rollout_rpcs import RolloutRPCs
from serveplane.controller.rollouts import RolloutDriver
from serveplane.controller.router_reports import RouterReports
from serveplane.endpoint_state import EndpointRecord, EndpointState
from serveplane.endpoint_state.state import validate_name
from serveplane.exceptions import (
    CorruptCheckpointError,
    DuplicateError,
    InUseError,
    InvalidConfigError,
    StaleEpochError,
)
from serveplane.kv_store import RecordStore, StateKey, open_store
from serveplane.kv_store.high_water import high_water_for
from serveplane.long_poll import LongPollHost
from serveplane.records import keys
from serveplane.redact import redact_url

logger = logging.getLogger(__name__)

CONTROL_LOOP_PERIOD_S = 0.1
ORPHAN_SWEEP_PERIOD_S = 10.0
EPOCH_CHECK_PERIOD_S = 1.0  # an idle zombie stops within this long (one store read each)

FENCING_ATOMIC = ("atomic: every write checks the epoch in the same store transaction, and "
                  "destructive actions run only after a write or an epoch read")
FENCING_GCS = ("weaker on ray:// (GCS KV has no multi-key transaction): epochs are claimed "
               "with GCS's atomic put-if-absent and checked before every write and "
               "destructive action, but a controller paused between that check and its write "
               "can still land one write after its successor started; a change cut short by a "
               "crash or a store error is rolled back from its undo log by the next writer")


def blob_hash(blob: bytes) -> str:
    """The content hash blobs are stored under (same as ``RecordStore.put_blob``)."""
    return hashlib.sha256(blob).hexdigest()


def _check_json(tag: str, user_config: Any) -> None:
    try:
        json.dumps(user_config)
    except (TypeError, ValueError) as exc:
        raise InvalidConfigError(
            f"user_config of backend {tag!r} is not JSON-serializable ({exc}); "
            "use dicts, lists, strings and numbers") from None


class ServeController(RolloutRPCs, MetricsRPCs, DashboardPublisher):
    """Run as a named, detached async Ray actor (see ``serveplane.api.start``).

    ``state_key`` authenticates everything it reads from and writes to the store (the driver
    resolves it: ``serveplane.state_key``). ``wrapper_factory``, ``run_io``, ``run_ray`` and
    ``clock`` are seams for unit tests and the simulator (fake replicas, inline I/O, a fake
    clock).
    """

    def __init__(self, kv_url: str, namespace: str, http_options: dict[str, Any] | None = None,
                 wrapper_factory: Any = None, run_loop: bool = True,
                 run_io: IORunner | None = None, run_ray: IORunner | None = None,
                 clock: ClockLike = None, store: Any = None,
                 actors: Any = None, wall_clock: ClockLike = None, *,
                 state_key: StateKey | None = None) -> None:
        if not isinstance(state_key, StateKey):
            raise InvalidConfigError(
                "the controller needs the state key (state_key=StateKey); serveplane.start() "
                "resolves it from $SERVEPLANE_STATE_KEY or the key file")
        self._namespace = namespace
        self._kv_url = kv_url
        self._http_options = http_options
        # one clock for the whole controller: monotonic for the loop, report freshness and
        # the autoscaler; wall time for persisted instants (rollout history, step starts)
        self._time = as_clock(clock, wall_clock)
        self._clock = self._time.monotonic
        self._wall = self._time.time
        self._pools: list[Any] = []
        if run_io is None:
            run_io, pool = thread_runner("serveplane-store")
            self._pools.append(pool)
        if run_ray is None:
            run_ray, pool = thread_runner("serveplane-ray")
            self._pools.append(pool)
        self._run_ray = run_ray
        self._actors: ActorDirectory = actors or RayActorDirectory(namespace)
        records = RecordStore(store if store is not None else open_store(kv_url),
                              namespace=f"serveplane/{namespace}", key=state_key,
                              high_water=high_water_for(kv_url, f"serveplane/{namespace}") if store is None else None)
        self._persistence = Persistence(records, records.acquire_epoch(), run_io)
        # the epoch orders snapshot ids across controller restarts (read-your-writes waits)
        self._long_poll = LongPollHost(generation=self._persistence.epoch)
        self._lock = asyncio.Lock()
        factory: Callable[[str, str], Any] = wrapper_factory or (
            lambda backend, tag: ReplicaActorWrapper(backend, tag, namespace))
        self._backends = BackendStateManager(factory)
        self._endpoints = EndpointState(self._backends.exists)
        self._goals = GoalManager()
        self._router_reports = RouterReports(self._time)
        self._autoscaler = Autoscaler(self._router_reports, self._time)
        self._reconciler = Reconciler(self._backends, self._goals, self._persistence,
                                      self._autoscaler, self._lock, run_ray,
                                      self._publish_replicas, self._publish_removed)
        self._router_blobs: dict[str, bytes] = {}
        self.rollbacks: collections.Counter[tuple[str, str]] = collections.Counter()
        self._rollouts = RolloutDriver(self._endpoints, self._persistence, self._lock,
                                       self._router_reports, self._publish_endpoint,
                                       clock=self._time, on_rollback=self._count_rollback,
                                       canary_unready=self._canary_unready,
                                       canary_failed=self._canary_failed)
        self._checkpoint_warning: str | None = None
        self._last_sweep = -math.inf        # the first step sweeps: a crash may have left orphans
        self._last_epoch_check = -math.inf
        started = time.perf_counter()
        gc.disable()  # recovery allocates many long-lived objects: collecting them midway is waste
        try:
            self._recover()
        finally:
            gc.enable()
        self.recovery_s = time.perf_counter() - started
        self._loop_task: asyncio.Task | None = None
        self._shutting_down = False
        self._init_dashboard()
        self._run_loop = run_loop
        try:
            self._ensure_loop()
        except RuntimeError:
            pass  # no loop yet (unit tests); the first RPC starts it

    @property
    def _epoch(self) -> int:
        return self._persistence.epoch

    @property
    def _store(self) -> RecordStore:
        return self._persistence.store

    # -- recovery ----------------------------------------------------------------
    def _recover(self) -> None:
        """Rebuild memory from live records; find the replica actors they name. Runs in the
        constructor, before the event loop serves anything, so blocking here stalls no RPC."""
        store = self._store
        records = store.read_all(skip_refused=True)
        refused = self._persistence.refused
        for name, why in store.refused.items():
            refused.record(name, store.key(name), why)
        if store.recovered_from_backup:
            self._checkpoint_warning = "; ".join(store.recovered_from_backup)
            logger.error("checkpoint was corrupt (%s); recovered the last good state from its backup",
                         self._checkpoint_warning)
        endpoints, goals, finished = {}, [], None
        now = self._clock()
        refs = self._persistence.refs
        for name, payload in records.items():
            kind, _, key = name.partition("/")
            if kind == "backend":
                record = BackendRecord.model_validate(payload)
                self._backends.add(record).recover(record.replica_tags, now)
                refs.apply((), record.blob_hashes())
            elif kind == "endpoint":
                endpoints[key] = payload
            elif kind == "goal":
                goals.append(Goal.from_payload(key, payload))
            elif name == FINISHED_RECORD:
                finished = payload
        for key, payload in list(endpoints.items()):
            digest = payload.get("router_blob_hash")
            if digest and digest not in self._router_blobs:
                try:
                    self._router_blobs[digest] = store.get_blob(digest)
                except CorruptCheckpointError as exc:  # its router is never sent to a router
                    refused.record(f"endpoint/{key}", store.key(f"endpoint/{key}"),
                                   f"its custom router is refused: {exc}")
                    del endpoints[key]
        self._endpoints.load_checkpoint(endpoints)
        for endpoint in self._endpoints.records().values():
            if endpoint.router_blob_hash:
                refs.apply((), (endpoint.router_blob_hash,))
        self._goals.load(goals, finished)
        self._rollouts.recovered()
        if refused.records:
            logger.error("refused %d record(s) of the store; they are not loaded and nothing of "
                         "theirs is destroyed until they are replaced or deleted: %s",
                         len(refused.records), "; ".join(refused.records.values()))
        else:
            unreferenced = store.blob_digests() - refs.referenced()
            if unreferenced:  # left by a crash of the previous format; collect them now
                store.write(self._epoch, {}, {digest: None for digest in unreferenced})
        for state in self._backends:
            self._publish_backend(state.tag)
        for name in self._endpoints.names():
            self._publish_endpoint(name)
        self._long_poll.notify_changed(keys.ROUTES, self._endpoints.routes())
        self._long_poll.notify_changed(keys.ENDPOINTS, tuple(sorted(self._endpoints.names())))
        logger.info("controller recovered epoch %d: %d backends, %d endpoints", self._epoch,
                    len(self._backends.tags()), len(self._endpoints.names()))

    # -- publish -----------------------------------------------------------------------
    def _publish_replicas(self, state: BackendState) -> None:
        self._long_poll.notify_changed(keys.replicas(state.tag), state.publish())

    def _publish_removed(self, tag: str) -> None:
        self._long_poll.notify_changed(keys.replicas(tag), ())

    def _publish_backend(self, tag: str) -> None:
        state = self._backends.get_any(tag)
        if state is None:
            return
        self._long_poll.notify_changed(keys.backend_config(tag), state.backend_info())
        self._publish_replicas(state)

    def _publish_endpoint(self, name: str) -> None:
        if self._endpoints.exists(name):
            record = self._endpoints.get(name)
            blob = self._router_blobs.get(record.router_blob_hash) if record.router_blob_hash else None
            self._long_poll.notify_changed(keys.endpoint(name), record.info(blob))
        else:
            self._long_poll.notify_changed(keys.endpoint(name), None)

    # -- control loop ----------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._persistence.stale is not None:
            raise self._persistence.stale
        if not self._run_loop:
            return
        if self._loop_task is None or self._loop_task.done():
            loop = asyncio.get_running_loop()
            self._loop_task = loop.create_task(self._run_control_loop(), name="serveplane-control-loop")
            self._loop_task.add_done_callback(self._loop_done)
        self._ensure_dashboard_loop()

    def _loop_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._shutting_down:
            return
        exc = task.exception()
        if exc is not None:
            logger.error("control loop crashed: %r; restarting it", exc)
            if self._persistence.stale is None:
                self._loop_task = None
                self._ensure_loop()

    async def _run_control_loop(self) -> None:
        while not self._shutting_down:
            started = self._clock()
            try:
                await self.control_step(started)
            except StaleEpochError:
                logger.error("controller epoch %d lost its namespace; the control loop stops",
                             self._epoch)
                return
            except Exception:  # noqa: BLE001 - logged; the loop must keep converging
                logger.exception("control step failed")
            await asyncio.sleep(max(0.0, CONTROL_LOOP_PERIOD_S - (self._clock() - started)))

    async def control_step(self, now: float) -> StepReport:
        """One reconcile pass (see ``reconciler.py``), then the periodic orphan sweep."""
        if now - self._last_epoch_check >= EPOCH_CHECK_PERIOD_S:
            self._last_epoch_check = now
            try:
                owned = await self._persistence.check_epoch()
            except Exception as exc:  # noqa: BLE001 - store unreachable: the step goes on
                logger.warning("cannot check the epoch: %s", exc)
                owned = True
            if not owned:
                raise self._persistence.stale or StaleEpochError(f"epoch {self._epoch} is stale")
        report = await self._reconciler.step(now)
        try:
            await self._rollouts.step()
        except StaleEpochError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the store is down: judged again next tick
            logger.warning("rollout step not stored (%s); retrying next tick", exc)
        if now - self._last_sweep > ORPHAN_SWEEP_PERIOD_S:
            self._last_sweep = now
            await self._sweep_orphans()
        return report

    async def _sweep_orphans(self) -> int:
        """Kill replica actors of this namespace that no record names (left by a lost or
        reset store, or by ``shutdown``). Fenced: a stale controller kills nothing, so a
        zombie never takes its successor's replicas for orphans. Held while a refused record
        is in the store: its replicas are not known to be orphans."""
        if self._persistence.refused.records and not self._shutting_down:
            return 0
        try:
            names = await self._run_ray(self._actors.replica_names)
        except Exception:  # noqa: BLE001 - best effort, next period
            return 0
        known = self._backends.all_persisted_names()
        orphans = [name for name in names if name not in known]
        try:
            if not orphans or not await self._persistence.check_epoch():
                return 0
        except Exception:  # noqa: BLE001 - store unreachable: no proof of ownership, no kills
            return 0
        for name in orphans:
            try:
                await self._run_ray(self._actors.kill, name)
                logger.warning("killed orphaned replica actor %s", name)
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
        return len(orphans)

    # -- changes -----------------------------------------------------------------------
    def _blob_writes(self, blobs: dict[str, bytes | None], removed: tuple[str, ...],
                     added: tuple[str, ...]) -> dict[str, bytes | None]:
        """New blobs that no record names yet, plus deletes of blobs no record will name."""
        refs = self._persistence.refs
        out: dict[str, bytes | None] = {d: data for d, data in blobs.items()
                                        if data is not None and not refs.names(d)}
        for digest in refs.released(removed, added):
            out[digest] = None
        return out

    def _goal_for_unchanged(self, tag: str) -> tuple[Goal | None, str | None]:
        """A call that changes nothing: the pending goal of the same change (a retry), or a
        fresh goal that reports the failure when the backend cannot start, or no goal."""
        pending = self._goals.latest_pending(tag)
        if pending is not None:
            return None, pending
        state = self._backends.get_any(tag)
        if state is not None and state.failed is not None:
            return GoalManager.new(tag, "update"), None
        return None, None

    async def _persist_unchanged_goal(self, tag: str) -> str | None:
        goal, existing = self._goal_for_unchanged(tag)
        if goal is None:
            return existing
        change = Change()
        self._goals.persist([goal], change.records)
        await self._persistence.write(change)
        self._goals.commit([goal])
        self._backends.mark_active(tag)
        return goal.id

    # -- backends ----------------------------------------------------------------------
    async def create_backend(self, tag: str, code_blob: bytes, init_blob: bytes,
                             actor_options: dict[str, Any] | None, config: dict[str, Any] | None,
                             accepts_batches: bool = False, code_version: str | None = None,
                             method_names: list[str] | None = None) -> str | None:
        self._ensure_loop()
        validate_name("backend", tag)
        options = validate_actor_options(actor_options)
        cfg = parse_backend_config(config)
        _check_json(tag, cfg.user_config)
        async with self._lock:
            code_hash, init_hash = blob_hash(code_blob), blob_hash(init_blob)
            record = BackendRecord.make(tag, code_hash, init_hash, options, cfg, accepts_batches,
                                        code_version=code_version, method_names=method_names)
            existing = self._backends.get_any(tag)
            if existing is not None and not existing.record.deleting:
                if existing.record.same_definition(record):
                    return await self._persist_unchanged_goal(tag)
                raise DuplicateError(
                    f"backend {tag!r} already exists with a different definition; use "
                    "update_backend_config or update_backend to change it, or pick a new tag")
            if existing is not None:
                raise DuplicateError(f"backend {tag!r} is still being deleted; retry shortly")
            goal = GoalManager.new(tag, "create")
            blobs = self._blob_writes({code_hash: code_blob, init_hash: init_blob}, (),
                                      record.blob_hashes())
            change = Change(records={f"backend/{tag}": record.model_dump(mode="json")}, blobs=blobs)
            self._goals.persist([goal], change.records)
            await self._persistence.write(change)
            self._backends.add(record)
            self._persistence.refs.apply((), record.blob_hashes())
            self._goals.commit([goal])
            self._publish_backend(tag)
            return goal.id

    async def update_backend(self, tag: str, code_blob: bytes | None, init_blob: bytes | None,
                             actor_options: dict[str, Any] | None,
                             config_update: dict[str, Any] | None,
                             accepts_batches: bool | None = None,
                             code_version: str | None = None,
                             method_names: list[str] | None = None) -> str | None:
        """Change code, init args, actor options and/or config; rolls replicas if needed."""
        self._ensure_loop()
        async with self._lock:
            state = self._backends.get(tag)
            old = state.record
            cfg = old.config
            if config_update:
                cfg = old.config.merged(parse_backend_config(config_update))
                _check_json(tag, cfg.user_config)
            options = validate_actor_options(actor_options) if actor_options is not None else old.actor_options
            code_hash = blob_hash(code_blob) if code_blob is not None else old.code_hash
            init_hash = blob_hash(init_blob) if init_blob is not None else old.init_hash
            target = old.target_replicas
            if config_update and ("num_replicas" in config_update or "autoscaling_config" in config_update):
                target = cfg.initial_replicas()
            if code_blob is not None and code_version is not None and code_version == old.code_version:
                code_hash = old.code_hash  # same declared version: keep the code that runs
                code_blob = None
                method_names = None
            record = BackendRecord.make(
                tag, code_hash, init_hash, options, cfg,
                old.accepts_batches if accepts_batches is None else accepts_batches,
                replica_tags=old.replica_tags, target_replicas=target,
                code_version=code_version if code_version is not None else old.code_version,
                method_names=old.method_names if code_blob is None or method_names is None else method_names)
            if record == old:
                return await self._persist_unchanged_goal(tag)
            goal = GoalManager.new(tag, "update")
            new_blobs: dict[str, bytes | None] = {}
            if code_blob is not None:
                new_blobs[code_hash] = code_blob
            if init_blob is not None:
                new_blobs[init_hash] = init_blob
            change = Change(records={f"backend/{tag}": record.model_dump(mode="json")},
                            blobs=self._blob_writes(new_blobs, old.blob_hashes(), record.blob_hashes()))
            self._goals.persist([goal], change.records)
            await self._persistence.write(change)
            self._backends.set_target(state, record)
            self._persistence.refs.apply(old.blob_hashes(), record.blob_hashes())
            self._goals.commit([goal])
            self._publish_backend(tag)
            return goal.id

    async def update_backend_config(self, tag: str, config_update: dict[str, Any]) -> str | None:
        if not isinstance(config_update, dict):
            raise InvalidConfigError("config update must be a dict of the fields to change")
        return await self.update_backend(tag, None, None, None, config_update)

    async def get_backend_definitions(self) -> dict[str, dict[str, Any]]:
        """What ``serveplane apply`` compares against: versions, options and config."""
        return {tag: {"code_version": s.record.code_version, "code_hash": s.record.code_hash,
                      "init_hash": s.record.init_hash, "actor_options": s.record.actor_options,
                      "config": s.record.config.model_dump(mode="json")}
                for tag in self._backends.tags() for s in [self._backends.get(tag)]}

    async def get_backend_config(self, tag: str) -> dict[str, Any]:
        return self._backends.get(tag).record.config.model_dump(mode="json")

    async def list_backends(self) -> dict[str, dict[str, Any]]:
        return {tag: self._backends.get(tag).record.config.model_dump(mode="json")
                for tag in self._backends.tags()}

    async def delete_backend(self, tag: str, force: bool = False) -> str | None:
        self._ensure_loop()
        async with self._lock:
            state = self._backends.get_any(tag)
            if state is None:
                return None
            if state.record.deleting:
                return self._goals.latest_pending(tag)
            aborted = self._rollouts_aborted_by_deleting(tag)
            users = [u for u in self._endpoints.backends_in_use(tag)
                     if u not in aborted or tag in aborted[u].traffic or tag in aborted[u].shadows]
            if users:
                raise InUseError(
                    f"backend {tag!r} is still used by endpoint(s) {', '.join(users)}; remove it "
                    "from their traffic and shadows (or delete them) first")
            cfg = state.record.config
            if force:
                cfg = cfg.model_copy(update={"graceful_shutdown_timeout_s": 0.0})
            record = state.with_target(deleting=True, target_replicas=0, config=cfg)
            goal = GoalManager.new(tag, "delete")
            overtaken = GoalManager.finish(
                self._goals.pending_for(tag),
                f"backend {tag!r} was deleted before this change completed")
            change = Change(records={f"backend/{tag}": record.model_dump(mode="json")})
            for name, endpoint in aborted.items():
                change.records[f"endpoint/{name}"] = endpoint.model_dump(mode="json")
            self._goals.persist([*overtaken, goal], change.records)
            await self._persistence.write(change)
            for name, endpoint in aborted.items():
                self._rollouts.commit(endpoint)
                self._publish_endpoint(name)
            self._backends.set_target(state, record)
            self._goals.commit([*overtaken, goal])
            self._publish_removed(tag)
            return goal.id

    # -- endpoints ---------------------------------------------------------------------
    def _endpoint_snapshot_ids(self, name: str) -> dict[str, str]:
        """Snapshot ids of the long-poll keys an endpoint change touches: what a client waits
        for every proxy and router to hold before its call returns (read your writes)."""
        return self._long_poll.snapshot_ids((keys.endpoint(name), keys.ROUTES, keys.ENDPOINTS))

    async def snapshot_ids(self, long_poll_keys: list[str]) -> dict[str, str]:
        """The current snapshot id of each listed long-poll key (those ever published)."""
        return self._long_poll.snapshot_ids(tuple(long_poll_keys))

    async def _commit_endpoint(self, record: EndpointRecord | None, name: str,
                               router_blob: bytes | None = None,
                               routes_changed: bool = False) -> dict[str, str]:
        """Persist one endpoint record (``None``: delete) with its router blob, then commit;
        returns the snapshot ids to wait for (``_endpoint_snapshot_ids``)."""
        old = self._endpoints.get(name) if self._endpoints.exists(name) else None
        removed = (old.router_blob_hash,) if old is not None and old.router_blob_hash else ()
        added = (record.router_blob_hash,) if record is not None and record.router_blob_hash else ()
        new_blobs: dict[str, bytes | None] = {added[0]: router_blob} if added and router_blob else {}
        blobs = self._blob_writes(new_blobs, removed, added)
        await self._persistence.write(Change(
            records={f"endpoint/{name}": record.model_dump(mode="json") if record else None},
            blobs=blobs))
        if record is None:
            self._endpoints.remove(name)
        else:
            self._rollouts.commit(record)
        self._persistence.refs.apply(removed, added)
        if added and router_blob:
            self._router_blobs[added[0]] = router_blob
        for digest in removed:
            if not self._persistence.refs.names(digest):
                self._router_blobs.pop(digest, None)
        self._publish_endpoint(name)
        if routes_changed:  # an endpoint was created or deleted
            self._long_poll.notify_changed(keys.ROUTES, self._endpoints.routes())
            self._long_poll.notify_changed(keys.ENDPOINTS, tuple(sorted(self._endpoints.names())))
        return self._endpoint_snapshot_ids(name)

    async def create_endpoint(self, name: str, backend: str, route: str | None,
                              methods: list[str] | None, router: Any = None,
                              router_blob: bytes | None = None, batch_size: int | None = None,
                              batch_timeout_s: float = 0.0) -> dict[str, str]:
        async with self._lock:
            router_hash = blob_hash(router_blob) if router_blob is not None else None
            router_arg = router if router_blob is None else _BlobRouter
            record = self._endpoints.validate_create(name, backend, route, methods, router_arg,
                                                     batch_size, batch_timeout_s, router_hash)
            if record is None:
                return self._endpoint_snapshot_ids(name)  # a retry: wait as the first call did
            return await self._commit_endpoint(record, name, router_blob, routes_changed=True)

    async def delete_endpoint(self, name: str) -> dict[str, str]:
        async with self._lock:
            if not self._endpoints.exists(name):
                return self._endpoint_snapshot_ids(name)
            return await self._commit_endpoint(None, name, routes_changed=True)

    async def set_traffic(self, name: str, traffic: dict[str, float]) -> dict[str, str]:
        async with self._lock:
            record = self._endpoints.validate_traffic(name, traffic)
            return await self._commit_endpoint(self._operator_wins(record, f"set_traffic({traffic})"), name)

    async def shadow_traffic(self, name: str, backend: str, proportion: float) -> dict[str, str]:
        async with self._lock:
            record = self._endpoints.validate_shadow(name, backend, proportion)
            return await self._commit_endpoint(
                self._operator_wins(record, f"shadow_traffic({backend!r}, {proportion})"), name)

    async def set_router(self, name: str, router: Any = None,
                         router_blob: bytes | None = None) -> dict[str, str]:
        async with self._lock:
            router_hash = blob_hash(router_blob) if router_blob is not None else None
            record = self._endpoints.validate_router_change(
                name, router if router_blob is None else _BlobRouter, router_hash)
            return await self._commit_endpoint(record, name, router_blob)

    async def set_batching(self, name: str, batch_size: int | None,
                           batch_timeout_s: float) -> dict[str, str]:
        async with self._lock:
            record = self._endpoints.validate_batching_change(name, batch_size, batch_timeout_s)
            return await self._commit_endpoint(record, name)

    async def list_endpoints(self) -> dict[str, dict[str, Any]]:
        return {name: r.public() for name, r in self._endpoints.records().items()}

    # -- goals, status, long poll ------------------------------------------------------
    async def wait_for_goal(self, goal_id: str, timeout_s: float) -> dict[str, Any]:
        return await self._goals.wait(goal_id, timeout_s)

    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, Any]) -> Any:
        return await self._long_poll.listen_for_change(keys_to_snapshot_ids)

    async def _placement_notes(self) -> dict[str, str]:
        """Backends with replicas still starting while the cluster lacks room for one more:
        they may be waiting for a node to join (see ``serveplane.placement``)."""
        starting = {s.tag: (s.record.actor_options, s.replicas.count(ReplicaState.STARTING))
                    for s in self._backends if s.replicas.count(ReplicaState.STARTING)}
        if not starting:
            return {}
        try:
            available, total = await self._run_ray(placement.cluster_available)
        except Exception:  # noqa: BLE001 - best effort: the status goes on without notes
            return {}
        notes = {tag: placement.waiting_note(placement.replica_demand(options), count, available, total)
                 for tag, (options, count) in starting.items()}
        return {tag: note for tag, note in notes.items() if note}

    async def get_status(self) -> dict[str, Any]:
        store = self._store
        notes = await self._placement_notes()
        return {"epoch": self._epoch, "kv_store": redact_url(self._kv_url),
                "state_key": {"id": store.state_key.id, "source": store.state_key.source},
                "refused": self._persistence.refused.report(),
                "fencing": FENCING_ATOMIC if store.atomic else FENCING_GCS,
                "stale": self._persistence.stale is not None,
                "backends": {s.tag: {**s.status(), "placement": notes.get(s.tag)} for s in self._backends},
                "endpoints": {n: r.public() for n, r in self._endpoints.records().items()},
                "pending_goals": len(self._goals.pending()),
                "recovery_s": round(self.recovery_s, 4),
                "checkpoint_warning": self._checkpoint_warning}

    async def get_epoch(self) -> int:
        return self._epoch

    async def ping(self) -> bool:
        self._ensure_loop()
        return True

    async def shutdown(self) -> None:
        """Stop every replica and forget all state (the checkpoint and its blobs too)."""
        async with self._lock:
            self._shutting_down = True
            if self._loop_task is not None:
                self._loop_task.cancel()
            # everything, refused records and blobs no loaded record names included
            stored_blobs = await self._persistence.stored_blobs()
            change = Change(
                records={**{f"backend/{s.tag}": None for s in self._backends},
                         **{f"endpoint/{n}": None for n in self._endpoints.names()},
                         **{name: None for name in self._goals.all_names()},
                         **{name: None for name in self._persistence.refused.records}},
                blobs={digest: None for digest in self._persistence.refs.referenced() | stored_blobs})
            await self._persistence.write(change)
            for state in self._backends:
                for replica in state.replicas:
                    try:
                        await self._run_ray(replica.wrapper.kill)
                    except Exception:  # noqa: BLE001 - already gone
                        pass
            for state in self._backends:
                self._backends.remove(state.tag)
            self._endpoints.load_checkpoint({})
            self._goals.load([])
            self._persistence.refs.apply(self._persistence.refs.referenced(), ())
        await self._sweep_orphans()


class _BlobRouter:
    """Stands for a user Router subclass that arrives already pickled."""

    @staticmethod
    def choose(replicas: Any, request: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError
