"""Target and current state of one backend, and the reconcile step that joins them.

``BackendState.update()`` is plain and synchronous: it polls replica probes (non-blocking),
moves replicas between states, and *returns* the actions to take. The control loop
checkpoints any new replica names, then runs the actions outside the write lock.

Rollouts never drop below the target: a new-version replica is started first (a surge of
one), and an old one is stopped only once the running count exceeds the target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import cloudpickle
from pydantic import BaseModel, ConfigDict, Field

from serveplane.backend_state.replica import (
    HealthStatus,
    ProbeStatus,
    Replica,
    ReplicaState,
    ReplicaStateContainer,
    ReplicaWrapper,
)
from serveplane.backend_state.wrapper import ReplicaSpec
from serveplane.config import BackendConfig
from serveplane.records import BackendInfo, ReplicaInfo

logger = logging.getLogger(__name__)

MAX_START_FAILURES = 3
LIVE = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UPDATING, ReplicaState.RECOVERING)
SERVING = (ReplicaState.RUNNING, ReplicaState.UPDATING)

WrapperFactory = Callable[[str, str], ReplicaWrapper]


def content_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=repr).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def user_config_version(user_config: Any) -> str:
    try:
        return content_hash(json.dumps(user_config, sort_keys=True))
    except (TypeError, ValueError):
        return content_hash(cloudpickle.dumps(user_config))


class BackendRecord(BaseModel):
    """Persisted target of one backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str
    code_hash: str
    init_hash: str
    actor_options: dict[str, Any] = Field(default_factory=dict)
    config: BackendConfig
    target_replicas: int
    version: str
    user_config_version: str
    accepts_batches: bool = False
    code_version: str | None = None      # user-given stable version of the code, if any
    replica_tags: tuple[str, ...] = ()   # names the controller created (write-ahead)
    deleting: bool = False

    @staticmethod
    def make(tag: str, code_hash: str, init_hash: str, actor_options: dict[str, Any],
             config: BackendConfig, accepts_batches: bool = False,
             replica_tags: tuple[str, ...] = (), target_replicas: int | None = None,
             code_version: str | None = None) -> BackendRecord:
        return BackendRecord(
            tag=tag, code_hash=code_hash, init_hash=init_hash, actor_options=actor_options,
            config=config,
            target_replicas=config.initial_replicas() if target_replicas is None else target_replicas,
            version=content_hash(code_version or code_hash, init_hash, actor_options),
            user_config_version=user_config_version(config.user_config),
            accepts_batches=accepts_batches, code_version=code_version, replica_tags=replica_tags)

    def same_definition(self, other: BackendRecord) -> bool:
        # pickled code is not byte-stable across processes: a given code_version wins
        same_code = (self.code_version == other.code_version if self.code_version and other.code_version
                     else self.code_hash == other.code_hash)
        return (same_code and self.init_hash == other.init_hash
                and self.actor_options == other.actor_options and self.config == other.config)


@dataclass
class Action:
    """One thing to do outside the lock."""

    kind: str  # "start" | "stop" | "reconfigure" | "kill"
    replica: Replica
    spec: ReplicaSpec | None = None
    user_config: Any = None
    user_config_version: str = ""
    graceful_timeout_s: float = 0.0

    def run(self, now: float) -> None:
        w = self.replica.wrapper
        if self.kind == "start":
            assert self.spec is not None
            w.start(self.spec)
        elif self.kind == "reconfigure":
            w.reconfigure(self.user_config, self.user_config_version)
        elif self.kind == "stop":
            w.begin_stop(self.graceful_timeout_s, now)
        elif self.kind == "kill":
            w.kill()


@dataclass
class BackendUpdate:
    actions: list[Action] = field(default_factory=list)
    serving_changed: bool = False   # the published replica set changed
    names_changed: bool = False     # replica names to checkpoint before acting
    converged: bool = False
    failure: str | None = None      # why the current version cannot start


class BackendState:
    def __init__(self, record: BackendRecord, code_blob: bytes, init_blob: bytes,
                 wrapper_factory: WrapperFactory) -> None:
        self.record = record
        self._code_blob = code_blob
        self._init_blob = init_blob
        self._factory = wrapper_factory
        self.replicas = ReplicaStateContainer()
        self._start_failures = 0
        self._last_failure: str | None = None
        self._next_start_at = 0.0
        self._published: tuple[str, ...] = ()

    # -- target ------------------------------------------------------------------
    @property
    def tag(self) -> str:
        return self.record.tag

    def set_target(self, record: BackendRecord, code_blob: bytes | None = None,
                   init_blob: bytes | None = None) -> None:
        if record.version != self.record.version or record.user_config_version != self.record.user_config_version:
            self._start_failures = 0
            self._last_failure = None
            self._next_start_at = 0.0
        self.record = record.model_copy(update={"replica_tags": self._tags()})
        if code_blob is not None:
            self._code_blob = code_blob
        if init_blob is not None:
            self._init_blob = init_blob

    def set_target_replicas(self, n: int) -> None:
        self.record = self.record.model_copy(update={"target_replicas": n})

    def mark_deleting(self) -> None:
        self.record = self.record.model_copy(update={"deleting": True, "target_replicas": 0})

    def recover(self, replica_tags: tuple[str, ...]) -> None:
        """After a controller restart: look the named actors up again."""
        for tag in replica_tags:
            wrapper = self._factory(self.tag, tag)
            self._configure_health(wrapper)
            if wrapper.recover():
                self.replicas.add(Replica(wrapper, ReplicaState.RECOVERING))
            else:
                logger.info("replica %s of backend %s is gone; it will be replaced", tag, self.tag)
        self.record = self.record.model_copy(update={"replica_tags": self._tags()})

    def _tags(self) -> tuple[str, ...]:
        return tuple(sorted(r.tag for r in self.replicas))

    def _configure_health(self, wrapper: ReplicaWrapper) -> None:
        cfg = self.record.config
        setter = getattr(wrapper, "set_health_options", None)
        if setter is not None:
            setter(cfg.health_check_period_s, cfg.health_check_timeout_s,
                   cfg.health_check_failure_threshold)

    def _spec(self) -> ReplicaSpec:
        r = self.record
        return ReplicaSpec(backend=r.tag, version=r.version, user_config_version=r.user_config_version,
                           code_blob=self._code_blob, init_blob=self._init_blob,
                           config=r.config.model_dump(mode="python"), actor_options=r.actor_options)

    # -- published views ---------------------------------------------------------
    def serving_infos(self) -> tuple[ReplicaInfo, ...]:
        mcq = self.record.config.max_concurrent_queries
        return tuple(ReplicaInfo(backend=self.tag, replica_tag=r.tag, actor_name=r.wrapper.actor_name,
                                 actor_handle=r.wrapper.actor_handle, max_concurrent_queries=mcq,
                                 node_id=r.wrapper.node_id)
                     for r in sorted(self.replicas.get(*SERVING), key=lambda r: r.tag))

    def backend_info(self) -> BackendInfo:
        return BackendInfo(backend=self.tag, config=self.record.config,
                           accepts_batches=self.record.accepts_batches)

    def status(self) -> dict[str, Any]:
        return {"target_replicas": self.record.target_replicas, "version": self.record.version,
                "replicas": self.replicas.summary(), "failure": self._last_failure}

    # -- reconcile -----------------------------------------------------------------
    def update(self, now: float) -> BackendUpdate:
        out = BackendUpdate()
        self._poll(now, out)
        self._reconfigure_stale(out)
        self._scale(now, out)
        serving = tuple(r.tag for r in sorted(self.replicas.get(*SERVING), key=lambda r: r.tag))
        if serving != self._published:
            self._published = serving
            out.serving_changed = True
        tags = self._tags()
        if tags != self.record.replica_tags:
            self.record = self.record.model_copy(update={"replica_tags": tags})
            out.names_changed = True
        out.converged = self._converged()
        out.failure = self._last_failure if self._start_failures >= MAX_START_FAILURES else None
        return out

    def _stop(self, replica: Replica, out: BackendUpdate, graceful: bool = True) -> None:
        self.replicas.move(replica, ReplicaState.STOPPING)
        timeout = self.record.config.graceful_shutdown_timeout_s if graceful else 0.0
        out.actions.append(Action("stop", replica, graceful_timeout_s=timeout))

    def _poll(self, now: float, out: BackendUpdate) -> None:
        r = self.record
        # replicas stopped during this pass are checked next pass, after their stop action ran
        for replica in self.replicas.get(ReplicaState.STOPPING):
            if replica.wrapper.check_stopped(now):
                self.replicas.remove(replica)
        for replica in self.replicas.get(ReplicaState.STARTING, ReplicaState.RECOVERING):
            status, err = replica.wrapper.check_ready()
            if status is ProbeStatus.SUCCEEDED:
                self.replicas.move(replica, ReplicaState.RUNNING)
                if replica.version == r.version:
                    self._start_failures = 0
                    self._last_failure = None
            elif status is ProbeStatus.FAILED:
                was_starting = replica.state is ReplicaState.STARTING
                self._stop(replica, out, graceful=False)
                if was_starting:
                    self._start_failures += 1
                    self._last_failure = (f"replica {replica.wrapper.actor_name} of backend "
                                          f"{self.tag!r} failed to start: {err}")
                    logger.warning("%s", self._last_failure)
                    self._next_start_at = now + min(30.0, 0.5 * 2 ** (self._start_failures - 1))
        for replica in self.replicas.get(ReplicaState.UPDATING):
            status, err = replica.wrapper.check_reconfigured()
            if status is ProbeStatus.SUCCEEDED:
                self.replicas.move(replica, ReplicaState.RUNNING)
            elif status is ProbeStatus.FAILED:
                self._last_failure = (f"reconfigure of replica {replica.wrapper.actor_name} "
                                      f"failed: {err}")
                logger.warning("%s", self._last_failure)
                self._stop(replica, out, graceful=True)
        for replica in self.replicas.get(ReplicaState.RUNNING, ReplicaState.UPDATING):
            health = replica.wrapper.check_health(now)
            if health is HealthStatus.DEAD:
                logger.warning("replica %s died; replacing it", replica.wrapper.actor_name)
                self._stop(replica, out, graceful=False)
            elif health is HealthStatus.UNHEALTHY:
                logger.warning("replica %s is unhealthy; replacing it", replica.wrapper.actor_name)
                self._stop(replica, out, graceful=False)

    def _reconfigure_stale(self, out: BackendUpdate) -> None:
        r = self.record
        for replica in self.replicas.get(ReplicaState.RUNNING):
            if replica.version == r.version and replica.wrapper.user_config_version != r.user_config_version:
                self.replicas.move(replica, ReplicaState.UPDATING)
                out.actions.append(Action("reconfigure", replica, user_config=r.config.user_config,
                                          user_config_version=r.user_config_version))

    def _scale(self, now: float, out: BackendUpdate) -> None:
        r = self.record
        target = r.target_replicas
        # a recovering replica reports its version once ready; until then count it as current
        current = [x for x in self.replicas.get(*LIVE) if x.version in (r.version, None)]
        old = [x for x in self.replicas.get(*LIVE) if x.version not in (r.version, None)]
        # old replicas that do not serve give no capacity: stop them at once
        for replica in old:
            if replica.state not in SERVING:
                self._stop(replica, out, graceful=False)
        old = [x for x in old if x.state in SERVING]
        if len(current) > target:
            order = {ReplicaState.STARTING: 0, ReplicaState.RECOVERING: 1,
                     ReplicaState.UPDATING: 2, ReplicaState.RUNNING: 3}
            for replica in sorted(current, key=lambda x: order[x.state])[: len(current) - target]:
                self._stop(replica, out, graceful=True)
            current = [x for x in current if x.state is not ReplicaState.STOPPING]
        # stop old replicas only while the serving count stays at or above the target
        serving_now = sum(1 for x in current if x.state in SERVING) + len(old)
        excess = serving_now - target
        for replica in old[: max(0, excess)]:
            self._stop(replica, out, graceful=True)
        old = [x for x in old if x.state is not ReplicaState.STOPPING]
        missing = target - len(current)
        if missing > 0 and now >= self._next_start_at and not r.deleting:
            surge = 1 if old else 0
            slots = target + surge - (len(current) + len(old))
            for _ in range(min(missing, max(0, slots))):
                tag = uuid.uuid4().hex[:8]
                wrapper = self._factory(self.tag, tag)
                self._configure_health(wrapper)
                replica = Replica(wrapper, ReplicaState.STARTING)
                self.replicas.add(replica)
                out.actions.append(Action("start", replica, spec=self._spec()))

    def _converged(self) -> bool:
        r = self.record
        if r.deleting:
            return len(self.replicas) == 0
        if self.replicas.count(ReplicaState.STARTING, ReplicaState.RECOVERING,
                               ReplicaState.UPDATING, ReplicaState.STOPPING):
            return False
        running = self.replicas.get(ReplicaState.RUNNING)
        return (len(running) == r.target_replicas
                and all(x.version == r.version
                        and x.wrapper.user_config_version == r.user_config_version for x in running))
