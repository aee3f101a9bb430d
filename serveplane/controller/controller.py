"""The controller actor: the one owner of hard state.

Invariants:
- RPC handlers validate fully, then change the *target* under the write lock, write the
  checkpoint (fenced by epoch), notify long-poll keys, and return a goal id. They never
  await a replica actor.
- The checkpoint is written before any replica actor is started (its name is in the
  checkpoint first) and before any long-poll notify, so a restart can always find every
  actor this controller created.
- A controller that learns its epoch is stale stops acting: it cannot overwrite its successor.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, Callable

import ray

from serveplane.backend_state import BackendRecord, BackendStateManager, ReplicaActorWrapper
from serveplane.config import (
    BackendConfig,
    parse_backend_config,
    validate_actor_options,
)
from serveplane.controller.autoscaler import Autoscaler
from serveplane.controller.goals import GoalManager
from serveplane.endpoint_state import EndpointRecord, EndpointState
from serveplane.endpoint_state.state import validate_name
from serveplane.exceptions import (
    DuplicateError,
    InUseError,
    InvalidConfigError,
    StaleEpochError,
)
from serveplane.kv_store import RecordStore, open_store
from serveplane.long_poll import LongPollHost
from serveplane.records import REPLICA_NAME_PREFIX, keys

logger = logging.getLogger(__name__)

CONTROL_LOOP_PERIOD_S = 0.1
ORPHAN_SWEEP_PERIOD_S = 10.0


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


class ServeController:
    """Run as a named, detached async Ray actor (see ``serveplane.api.start``)."""

    def __init__(self, kv_url: str, namespace: str, http_options: dict[str, Any] | None = None,
                 wrapper_factory: Any = None, run_loop: bool = True) -> None:
        self._namespace = namespace
        self._kv_url = kv_url
        self._http_options = http_options
        self._store = RecordStore(open_store(kv_url), namespace=f"serveplane/{namespace}")
        self._epoch = self._store.acquire_epoch()
        self._stale: StaleEpochError | None = None
        self._long_poll = LongPollHost()
        self._lock = asyncio.Lock()
        factory: Callable[[str, str], Any] = wrapper_factory or (
            lambda backend, tag: ReplicaActorWrapper(backend, tag, namespace))
        self._backends = BackendStateManager(factory)
        self._endpoints = EndpointState(self._backends.exists)
        self._goals = GoalManager()
        self._autoscaler = Autoscaler()
        self._router_stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._blobs: dict[str, bytes] = {}
        self._started_at = time.monotonic()
        self._recovered_at: float | None = None
        self._checkpoint_warning: str | None = None
        self._last_sweep = 0.0
        self._recover()
        self._loop_task: asyncio.Task | None = None
        self._shutting_down = False
        self._run_loop = run_loop
        try:
            self._ensure_loop()
        except RuntimeError:
            pass  # no loop yet (unit tests); the first RPC starts it

    # -- recovery ----------------------------------------------------------------
    def _recover(self) -> None:
        records = self._store.read_all()
        if self._store.recovered_from_backup:
            self._checkpoint_warning = "; ".join(self._store.recovered_from_backup)
            logger.error("checkpoint was corrupt (%s); recovered the last good state from its backup",
                         self._checkpoint_warning)
        endpoints, goals = {}, {}
        for name, payload in records.items():
            kind, _, key = name.partition("/")
            if kind == "backend":
                record = BackendRecord.model_validate(payload)
                code = self._store.get_blob(record.code_hash)
                init = self._store.get_blob(record.init_hash)
                self._backends.add(record, code, init).recover(record.replica_tags)
            elif kind == "endpoint":
                endpoints[key] = payload
            elif kind == "goal":
                goals[key] = payload["backend"]
        self._endpoints.load_checkpoint(endpoints)
        for endpoint in self._endpoints.records().values():
            if endpoint.router_blob_hash:
                self._blobs[endpoint.router_blob_hash] = self._store.get_blob(endpoint.router_blob_hash)
        self._goals.load_checkpoint(goals)
        for state in self._backends:
            self._publish_backend(state.tag)
        for name in self._endpoints.names():
            self._publish_endpoint(name)
        self._long_poll.notify_changed(keys.ROUTES, self._endpoints.routes())
        logger.info("controller recovered epoch %d: %d backends, %d endpoints", self._epoch,
                    len(self._backends.tags()), len(self._endpoints.names()))

    def _sweep_orphans(self) -> None:
        """Kill replica actors in our namespace that no backend knows (e.g. from a crash)."""
        known = self._backends.all_replica_names()
        try:
            named = ray.util.list_named_actors(all_namespaces=True)
        except Exception:  # noqa: BLE001 - best effort
            return
        for entry in named:
            name, ns = entry.get("name", ""), entry.get("namespace")
            if ns == self._namespace and name.startswith(REPLICA_NAME_PREFIX) and name not in known:
                try:
                    ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
                    logger.warning("killed orphaned replica actor %s", name)
                except Exception:  # noqa: BLE001 - it may be gone already
                    pass

    # -- checkpoint / publish ------------------------------------------------------
    def _record(self, name: str) -> dict[str, Any] | None:
        """The persisted form of one record (``backend/<tag>``, ``endpoint/<name>``,
        ``goal/<id>``), or None when it no longer exists."""
        kind, _, key = name.partition("/")
        if kind == "backend":
            state = self._backends.get_any(key)
            return state.record.model_dump(mode="json") if state is not None else None
        if kind == "endpoint":
            return self._endpoints.get(key).model_dump(mode="json") if self._endpoints.exists(key) else None
        backend = self._goals.to_checkpoint().get(key)
        return {"backend": backend} if backend is not None else None

    def _checkpoint(self, names: list[str]) -> None:
        """Write the named records only: a change costs O(what it touched)."""
        if self._stale is not None:
            raise self._stale
        if not names:
            return
        try:
            self._store.write(self._epoch, {name: self._record(name) for name in names})
        except StaleEpochError as exc:
            self._stale = exc
            logger.error("controller epoch %d is stale; it stops acting: %s", self._epoch, exc)
            raise

    def _publish_backend(self, tag: str) -> None:
        state = self._backends.get_any(tag)
        if state is None:
            return
        self._long_poll.notify_changed(keys.backend_config(tag), state.backend_info())
        self._long_poll.notify_changed(keys.replicas(tag), state.serving_infos())

    def _publish_endpoint(self, name: str) -> None:
        if self._endpoints.exists(name):
            record = self._endpoints.get(name)
            blob = self._blobs.get(record.router_blob_hash) if record.router_blob_hash else None
            self._long_poll.notify_changed(keys.endpoint(name), record.info(blob))
        else:
            self._long_poll.notify_changed(keys.endpoint(name), None)

    def _commit(self, state_change: Any, names: list[str]) -> None:
        """Apply an in-memory change to the named records; undo it if the write fails."""
        before = {name: self._record(name) for name in names}
        goals_before = self._goals.to_checkpoint()
        state_change()
        goal_names = [f"goal/{g}" for g in sorted(set(goals_before) ^ set(self._goals.to_checkpoint()))]
        try:
            self._checkpoint(list(names) + goal_names)
        except Exception:
            self._restore(before, goals_before)
            raise

    def _restore(self, before: dict[str, dict[str, Any] | None], goals: dict[str, str]) -> None:
        for name, payload in before.items():
            kind, _, key = name.partition("/")
            if kind == "backend":
                if payload is None:
                    self._backends.remove(key)
                elif (state := self._backends.get_any(key)) is not None:
                    state.set_target(BackendRecord.model_validate(payload))
            elif kind == "endpoint":
                if payload is None:
                    self._endpoints.remove(key)
                else:
                    self._endpoints.put(EndpointRecord.model_validate(payload))
        self._goals.load_checkpoint(goals)

    # -- control loop ----------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if not self._run_loop:
            return
        if self._loop_task is None or self._loop_task.done():
            loop = asyncio.get_running_loop()
            self._loop_task = loop.create_task(self._run_control_loop(), name="serveplane-control-loop")
            self._loop_task.add_done_callback(self._loop_done)

    def _loop_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._shutting_down:
            return
        exc = task.exception()
        if exc is not None:
            logger.error("control loop crashed: %r; restarting it", exc)
            if self._stale is None:
                self._loop_task = None
                self._ensure_loop()

    async def _run_control_loop(self) -> None:
        while not self._shutting_down:
            started = time.monotonic()
            try:
                self.control_step(started)
            except StaleEpochError:
                return
            except Exception:  # noqa: BLE001 - logged; the loop must keep converging
                logger.exception("control step failed")
            await asyncio.sleep(max(0.0, CONTROL_LOOP_PERIOD_S - (time.monotonic() - started)))

    def control_step(self, now: float) -> None:
        """One reconcile pass: decide under the lock's protection (no awaits), then act."""
        self._autoscale(now)
        updates = self._backends.update(now)
        # write-ahead: new replica names are stored before their actors start
        self._checkpoint([f"backend/{tag}" for tag, u in updates.items() if u.names_changed])
        for tag, update in updates.items():
            for action in update.actions:
                try:
                    action.run(now)
                except Exception:  # noqa: BLE001 - a bad action must not stop the loop
                    logger.exception("action %s on %s failed", action.kind, action.replica)
            state = self._backends.get_any(tag)
            if state is None:
                continue
            if update.serving_changed:
                self._long_poll.notify_changed(keys.replicas(tag), state.serving_infos())
            if update.converged and state.record.deleting:
                self._backends.remove(tag)
                done = self._goals.complete(tag)
                self._checkpoint([f"backend/{tag}"] + [f"goal/{g}" for g in done])
                self._long_poll.notify_changed(keys.replicas(tag), ())
            elif update.converged and self._goals.has_pending(tag):
                done = self._goals.complete(tag)
                self._checkpoint([f"goal/{g}" for g in done])
            elif update.failure and self._goals.has_pending(tag):
                self._goals.fail(tag, update.failure)
        if now - self._last_sweep > ORPHAN_SWEEP_PERIOD_S:
            self._last_sweep = now
            self._sweep_orphans()

    def _autoscale(self, now: float) -> None:
        changed: list[str] = []
        for state in self._backends:
            auto = state.record.config.autoscaling_config
            if auto is None or state.record.deleting:
                continue
            running = len(state.serving_infos())
            desired = self._autoscaler.decide(
                state.tag, auto, state.record.target_replicas, running, running,
                state.record.config.max_concurrent_queries, now)
            if desired is not None:
                state.set_target_replicas(desired)
                changed.append(f"backend/{state.tag}")
                logger.info("autoscaling %s to %d: %s", state.tag, desired,
                            self._autoscaler.events[-1].reason)
        self._checkpoint(changed)

    async def record_handle_metrics(self, router_id: str, per_backend: dict[str, dict[str, float]],
                                    router_stats: dict[str, Any] | None = None) -> None:
        """Routers push queued / in-flight / rate per backend (a few times a second at most)."""
        now = time.monotonic()
        self._autoscaler.record(router_id, per_backend, now)
        if router_stats is not None:
            self._router_stats[router_id] = (now, router_stats)

    async def get_metrics(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Service, replica and shadow figures (replica calls happen outside the lock)."""
        from serveplane.metrics import summarize

        now = time.monotonic()
        targets = [(s.tag, info) for s in self._backends for info in s.serving_infos()]
        mcq = {s.tag: s.record.config.max_concurrent_queries for s in self._backends}

        async def one(info: Any) -> dict[str, Any]:
            try:
                data = await asyncio.wait_for(info.actor_handle.get_metrics.remote(), timeout_s)
                return dict(data, healthy=True)
            except Exception:  # noqa: BLE001 - a replica that does not answer counts as unhealthy
                return {"healthy": False}

        results = await asyncio.gather(*(one(info) for _, info in targets))
        replicas = {info.actor_name: dict(data, backend=tag, max_concurrent_queries=mcq.get(tag, 1))
                    for (tag, info), data in zip(targets, results)}
        fresh = [stats for at, stats in self._router_stats.values() if now - at <= 10.0]
        sessions = sum(int(s.get("sessions", 0)) for s in fresh)
        shadows: dict[str, dict[str, Any]] = {}
        for stats in fresh:
            for backend, sh in stats.get("shadows", {}).items():
                acc = shadows.setdefault(backend, {"count": 0, "errors": 0, "dropped": 0, "compared": 0,
                                                   "_agreed": 0.0, "_lat": 0.0, "_done": 0})
                acc["count"] += sh["count"]
                acc["errors"] += sh["errors"]
                acc["dropped"] += sh.get("dropped", 0)
                acc["compared"] += sh.get("compared", 0)
                acc["_agreed"] += (sh["agreement"] or 0.0) * sh.get("compared", 0)
                done = max(0, sh["count"] - sh.get("dropped", 0))
                acc["_lat"] += sh["avg_latency_s"] * done
                acc["_done"] += done
        for acc in shadows.values():
            acc["agreement"] = acc.pop("_agreed") / acc["compared"] if acc["compared"] else None
            done = acc.pop("_done")
            acc["avg_latency_s"] = acc.pop("_lat") / done if done else 0.0
        queued = {tag: self._autoscaler.aggregate(tag, now)["queued"] for tag in mcq}
        summary = summarize(replicas, queued, shadows, sessions,
                            [e.as_dict() for e in self._autoscaler.events])
        summary["endpoints"] = {n: sorted(set(r.traffic) | set(r.shadows))
                                for n, r in self._endpoints.records().items()}
        return summary

    async def report_replica_failure(self, backend: str, actor_name: str) -> bool:
        """A router saw this replica die: health-check it now, so every router learns at once
        (the report is verified, never trusted: a live replica stays)."""
        state = self._backends.get_any(backend)
        if state is None:
            return False
        for replica in state.replicas:
            if replica.wrapper.actor_name == actor_name:
                probe = getattr(replica.wrapper, "probe_now", None)
                if probe is not None:
                    probe()
                return True
        return False

    async def get_scaling_events(self) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self._autoscaler.events]

    # -- backends ----------------------------------------------------------------------
    async def create_backend(self, tag: str, code_blob: bytes, init_blob: bytes,
                             actor_options: dict[str, Any] | None, config: dict[str, Any] | None,
                             accepts_batches: bool = False, code_version: str | None = None) -> str | None:
        self._ensure_loop()
        validate_name("backend", tag)
        options = validate_actor_options(actor_options)
        cfg = parse_backend_config(config)
        _check_json(tag, cfg.user_config)
        async with self._lock:
            code_hash, init_hash = blob_hash(code_blob), blob_hash(init_blob)
            record = BackendRecord.make(tag, code_hash, init_hash, options, cfg, accepts_batches,
                                        code_version=code_version)
            existing = self._backends.get_any(tag)
            if existing is not None and not existing.record.deleting:
                if existing.record.same_definition(record):
                    return self._goals.pending_for(tag)[0] if self._goals.has_pending(tag) else None
                raise DuplicateError(
                    f"backend {tag!r} already exists with a different definition; use "
                    "update_backend_config or update_backend to change it, or pick a new tag")
            if existing is not None:
                raise DuplicateError(f"backend {tag!r} is still being deleted; retry shortly")
            self._store_blob(code_blob, code_hash)
            self._store_blob(init_blob, init_hash)
            goal: list[str] = []

            def change() -> None:
                self._backends.add(record, code_blob, init_blob)
                goal.append(self._goals.create(tag))

            self._commit(change, [f"backend/{tag}"])
            self._publish_backend(tag)
            return goal[0]

    def _store_blob(self, blob: bytes, expected_hash: str) -> None:
        stored = self._store.put_blob(blob)
        if stored != expected_hash:
            raise RuntimeError(f"blob stored under {stored}, expected {expected_hash}")
        self._blobs[expected_hash] = blob

    async def update_backend(self, tag: str, code_blob: bytes | None, init_blob: bytes | None,
                             actor_options: dict[str, Any] | None,
                             config_update: dict[str, Any] | None,
                             accepts_batches: bool | None = None,
                             code_version: str | None = None) -> str | None:
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
            record = BackendRecord.make(
                tag, code_hash, init_hash, options, cfg,
                old.accepts_batches if accepts_batches is None else accepts_batches,
                replica_tags=old.replica_tags, target_replicas=target,
                code_version=code_version if code_version is not None else old.code_version)
            if record == old:
                return None
            if code_blob is not None:
                self._store_blob(code_blob, code_hash)
            if init_blob is not None:
                self._store_blob(init_blob, init_hash)
            goal: list[str] = []

            def change() -> None:
                state.set_target(record, code_blob, init_blob)
                goal.append(self._goals.create(tag))

            self._commit(change, [f"backend/{tag}"])
            self._publish_backend(tag)
            return goal[0]

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
                pending = self._goals.pending_for(tag)
                return pending[0] if pending else None
            users = self._endpoints.backends_in_use(tag)
            if users:
                raise InUseError(
                    f"backend {tag!r} is still used by endpoint(s) {', '.join(users)}; remove it "
                    "from their traffic and shadows (or delete them) first")
            goal: list[str] = []

            def change() -> None:
                if force:
                    cfg = state.record.config.model_copy(update={"graceful_shutdown_timeout_s": 0.0})
                    state.set_target(state.record.model_copy(update={"config": cfg}))
                state.mark_deleting()
                goal.append(self._goals.create(tag))

            self._commit(change, [f"backend/{tag}"])
            self._long_poll.notify_changed(keys.replicas(tag), ())
            return goal[0]

    # -- endpoints ---------------------------------------------------------------------
    async def create_endpoint(self, name: str, backend: str, route: str | None,
                              methods: list[str] | None, router: Any = None,
                              router_blob: bytes | None = None, batch_size: int | None = None,
                              batch_timeout_s: float = 0.0) -> None:
        async with self._lock:
            router_hash = blob_hash(router_blob) if router_blob is not None else None
            router_arg = router if router_blob is None else _BlobRouter
            record = self._endpoints.validate_create(name, backend, route, methods, router_arg,
                                                     batch_size, batch_timeout_s, router_hash)
            if record is None:
                return
            if router_blob is not None:
                self._store_blob(router_blob, router_hash)  # type: ignore[arg-type]
            self._commit(lambda: self._endpoints.put(record), [f"endpoint/{name}"])
            self._publish_endpoint(name)
            self._long_poll.notify_changed(keys.ROUTES, self._endpoints.routes())

    async def delete_endpoint(self, name: str) -> None:
        async with self._lock:
            if not self._endpoints.exists(name):
                return
            self._commit(lambda: self._endpoints.remove(name), [f"endpoint/{name}"])
            self._publish_endpoint(name)
            self._long_poll.notify_changed(keys.ROUTES, self._endpoints.routes())

    async def set_traffic(self, name: str, traffic: dict[str, float]) -> None:
        async with self._lock:
            record = self._endpoints.validate_traffic(name, traffic)
            self._commit(lambda: self._endpoints.put(record), [f"endpoint/{name}"])
            self._publish_endpoint(name)

    async def shadow_traffic(self, name: str, backend: str, proportion: float) -> None:
        async with self._lock:
            record = self._endpoints.validate_shadow(name, backend, proportion)
            self._commit(lambda: self._endpoints.put(record), [f"endpoint/{name}"])
            self._publish_endpoint(name)

    async def set_router(self, name: str, router: Any = None, router_blob: bytes | None = None) -> None:
        async with self._lock:
            router_hash = blob_hash(router_blob) if router_blob is not None else None
            record = self._endpoints.validate_router_change(
                name, router if router_blob is None else _BlobRouter, router_hash)
            if router_blob is not None:
                self._store_blob(router_blob, router_hash)  # type: ignore[arg-type]
            self._commit(lambda: self._endpoints.put(record), [f"endpoint/{name}"])
            self._publish_endpoint(name)

    async def set_batching(self, name: str, batch_size: int | None, batch_timeout_s: float) -> None:
        async with self._lock:
            record = self._endpoints.validate_batching_change(name, batch_size, batch_timeout_s)
            self._commit(lambda: self._endpoints.put(record), [f"endpoint/{name}"])
            self._publish_endpoint(name)

    async def list_endpoints(self) -> dict[str, dict[str, Any]]:
        return {name: r.public() for name, r in self._endpoints.records().items()}

    # -- goals, status, long poll ------------------------------------------------------
    async def wait_for_goal(self, goal_id: str, timeout_s: float) -> dict[str, Any]:
        return await self._goals.wait(goal_id, timeout_s)

    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, Any]) -> Any:
        return await self._long_poll.listen_for_change(keys_to_snapshot_ids)

    async def get_status(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "kv_store": self._kv_url,
                "backends": {s.tag: s.status() for s in self._backends},
                "endpoints": {n: r.public() for n, r in self._endpoints.records().items()},
                "pending_goals": len(self._goals.to_checkpoint()),
                "checkpoint_warning": self._checkpoint_warning}

    async def get_epoch(self) -> int:
        return self._epoch

    async def ping(self) -> bool:
        self._ensure_loop()
        return True

    async def shutdown(self) -> None:
        """Stop every replica and forget all state (the checkpoint too)."""
        async with self._lock:
            self._shutting_down = True
            if self._loop_task is not None:
                self._loop_task.cancel()
            for state in self._backends:
                for replica in state.replicas:
                    replica.wrapper.kill()
            names = ([f"backend/{s.tag}" for s in self._backends]
                     + [f"endpoint/{n}" for n in self._endpoints.names()]
                     + [f"goal/{g}" for g in self._goals.to_checkpoint()])
            replacement: Callable[[str, str], Any] = lambda b, t: ReplicaActorWrapper(b, t, self._namespace)
            self._backends = BackendStateManager(replacement)
            self._sweep_orphans()
            self._endpoints.load_checkpoint({})
            self._goals.load_checkpoint({})
            self._checkpoint(names)


class _BlobRouter:
    """Stands for a user Router subclass that arrives already pickled."""

    @staticmethod
    def choose(replicas: Any, request: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError
