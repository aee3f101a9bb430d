"""Target and current state of one backend, and the reconcile step that joins them.

``BackendState.update()`` decides and only decides: it observes the replicas (reads the
futures of earlier calls, never calls Ray), moves them between states, and returns the
actions to take. New replicas are *proposed*, not added: the controller persists their
names first, then ``commit()`` adds them, then the start actions run (write-ahead). An
action that raises comes back through ``action_failed()`` as an outcome the next decision
sees (a failed start counts as one at once).

Invariants:
- the persisted ``record.replica_tags`` is a superset of the live replicas' names;
- rollouts never drop below the target: a new-version replica starts first (a surge of
  one) and an old one stops only once the serving count exceeds the target;
- a replica stays in STARTING or RECOVERING at most ``startup_timeout_s``;
- RECOVERING replicas are published: a replica that served before a controller restart
  keeps serving until it is proven dead.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from serveplane.backend_state.record import BackendRecord
from serveplane.backend_state.replica import (
    HealthStatus,
    ProbeStatus,
    Replica,
    ReplicaState,
    ReplicaStateContainer,
    ReplicaWrapper,
)
from serveplane.backend_state.wrapper import ReplicaSpec
from serveplane.records import BackendInfo, ReplicaInfo

logger = logging.getLogger(__name__)

MAX_START_FAILURES = 3
LIVE = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UPDATING, ReplicaState.RECOVERING)
SERVING = (ReplicaState.RUNNING, ReplicaState.UPDATING, ReplicaState.RECOVERING)
IN_TRANSIT = (ReplicaState.STARTING, ReplicaState.RECOVERING, ReplicaState.UPDATING,
              ReplicaState.STOPPING)

WrapperFactory = Callable[[str, str], ReplicaWrapper]


@dataclass
class Action:
    """One thing to do after the decision is persisted; ``run`` may raise."""

    kind: str  # "start" | "reconfigure" | "probe" | "stop" | "kill"
    replica: Replica
    spec: ReplicaSpec | None = None
    config: dict[str, Any] | None = None
    config_version: str = ""
    graceful_timeout_s: float = 0.0

    @property
    def destructive(self) -> bool:
        return self.kind in ("stop", "kill")

    def run(self, now: float) -> None:
        w = self.replica.wrapper
        if self.kind == "start":
            if self.spec is None:
                raise ValueError("a start action needs a replica spec")
            w.start(self.spec)
        elif self.kind == "reconfigure":
            w.reconfigure(self.config or {}, self.config_version)
        elif self.kind == "probe":
            w.send_health_check(now)
        elif self.kind == "stop":
            w.begin_stop(self.graceful_timeout_s, now)
        elif self.kind == "kill":
            w.kill()


@dataclass
class BackendUpdate:
    actions: list[Action] = field(default_factory=list)
    starts: list[Replica] = field(default_factory=list)  # proposed: added by commit()
    record: BackendRecord | None = None  # to persist before acting (new replica names)
    serving_changed: bool = False        # the published replica set changed
    converged: bool = False
    failure: str | None = None           # why the current version cannot start

    @property
    def names_changed(self) -> bool:
        return self.record is not None


class BackendState:
    def __init__(self, record: BackendRecord, wrapper_factory: WrapperFactory) -> None:
        self.record = record
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

    def set_target(self, record: BackendRecord) -> None:
        """Commit a new target (already persisted). Keeps the replica names this state owns."""
        if record.version != self.record.version or record.config_version != self.record.config_version:
            self._start_failures = 0
            self._last_failure = None
            self._next_start_at = 0.0
        self.record = record.model_copy(update={"replica_tags": self.record.replica_tags})
        for replica in self.replicas:
            self._configure_health(replica.wrapper)

    def with_target(self, **changes: Any) -> BackendRecord:
        """The current record with ``changes``: what an RPC persists before ``set_target``."""
        return self.record.model_copy(update=changes)

    def recover(self, replica_tags: tuple[str, ...], now: float = 0.0) -> None:
        """After a controller restart: look the named actors up again."""
        for tag in replica_tags:
            wrapper = self._factory(self.tag, tag)
            self._configure_health(wrapper)
            if wrapper.recover():
                self.replicas.add(Replica(wrapper, ReplicaState.RECOVERING, since=now))
            else:
                logger.info("replica %s of backend %s is gone; it will be replaced", tag, self.tag)

    def _tags(self) -> tuple[str, ...]:
        return tuple(sorted(r.tag for r in self.replicas))

    def _configure_health(self, wrapper: ReplicaWrapper) -> None:
        cfg = self.record.config
        wrapper.set_health_options(cfg.health_check_period_s, cfg.health_check_timeout_s,
                                   cfg.health_check_failure_threshold)

    def spec(self) -> ReplicaSpec:
        """What a new replica of the current target runs; blobs are filled in by the caller."""
        r = self.record
        return ReplicaSpec(backend=r.tag, version=r.version, config_version=r.config_version,
                           code_hash=r.code_hash, init_hash=r.init_hash,
                           config=r.config.model_dump(mode="python"), actor_options=r.actor_options)

    # -- published views ---------------------------------------------------------
    def serving_infos(self) -> tuple[ReplicaInfo, ...]:
        mcq = self.record.config.max_concurrent_queries
        return tuple(ReplicaInfo(backend=self.tag, replica_tag=r.tag, actor_name=r.wrapper.actor_name,
                                 actor_handle=r.wrapper.actor_handle, max_concurrent_queries=mcq,
                                 node_id=r.wrapper.node_id)
                     for r in sorted(self.replicas.get(*SERVING), key=lambda r: r.tag))

    def needs_publish(self) -> bool:
        """The serving set differs from what routers were last given."""
        return tuple(sorted(r.tag for r in self.replicas.get(*SERVING))) != self._published

    def publish(self) -> tuple[ReplicaInfo, ...]:
        """The serving set as routers are about to see it; ``update`` compares with it."""
        infos = self.serving_infos()
        self._published = tuple(info.replica_tag for info in infos)
        return infos

    def backend_info(self) -> BackendInfo:
        return BackendInfo(backend=self.tag, config=self.record.config,
                           accepts_batches=self.record.accepts_batches,
                           method_names=self.record.method_names)

    def status(self) -> dict[str, Any]:
        return {"target_replicas": self.record.target_replicas, "version": self.record.version,
                "replicas": self.replicas.summary(), "failure": self._last_failure}

    @property
    def failed(self) -> str | None:
        """Why the current version cannot start, once it failed ``MAX_START_FAILURES`` times
        (never while deleting: nothing needs to start then)."""
        if self.record.deleting or self._start_failures < MAX_START_FAILURES:
            return None
        return self._last_failure

    # -- reconcile -----------------------------------------------------------------
    def update(self, now: float) -> BackendUpdate:
        out = BackendUpdate()
        self._observe(now, out)
        self._reconfigure_stale(now, out)
        self._scale(now, out)
        out.serving_changed = self.needs_publish()
        tags = tuple(sorted(self._tags() + tuple(r.tag for r in out.starts)))
        if tags != self.record.replica_tags:
            out.record = self.record.model_copy(update={"replica_tags": tags})
        out.converged = not out.starts and self._converged()
        out.failure = self.failed
        return out

    def commit(self, update: BackendUpdate) -> None:
        """The update's record was persisted: its proposed replicas now exist."""
        for replica in update.starts:
            self.replicas.add(replica)
        if update.record is not None:
            self.record = update.record

    def action_failed(self, action: Action, error: BaseException, now: float) -> None:
        """An action raised: the outcome the next ``update`` builds on."""
        replica = action.replica
        if replica not in self.replicas:
            return
        text = _describe(error)
        if action.kind == "start":
            self._note_start_failure(replica, f"could not be started: {text}", now)
            self._move_to_stopping(replica, now)
        elif action.kind == "reconfigure":
            self._last_failure = f"reconfigure of replica {replica.wrapper.actor_name} failed: {text}"
            logger.warning("%s", self._last_failure)
            self._move_to_stopping(replica, now)
        elif action.kind == "kill":
            replica.kill_sent = False  # try again next pass
            logger.warning("killing replica %s failed (%s); retrying", replica.wrapper.actor_name, text)
        else:
            logger.warning("%s of replica %s failed: %s", action.kind, replica.wrapper.actor_name, text)

    def action_deferred(self, action: Action) -> None:
        """A destructive action was held back (this controller could not prove it still owns
        its epoch): decide it again next pass."""
        if action.kind == "stop":
            action.replica.stop_sent = False
        elif action.kind == "kill":
            action.replica.kill_sent = False

    def action_done(self, action: Action) -> None:
        """A kill went through: the replica is gone."""
        if action.kind == "kill":
            self.replicas.remove(action.replica)

    def next_wakeup(self, now: float) -> float:
        """When this backend next needs a visit with nothing else happening: now if anything is
        in transit or unconverged, else its next health check or start back-off."""
        if self.replicas.count(*IN_TRANSIT):
            return now
        if not self._converged():
            return max(now, self._next_start_at)  # waiting out a start back-off
        due = math.inf
        for replica in self.replicas.get(ReplicaState.RUNNING):
            due = min(due, replica.wrapper.next_health_at())
        return due

    # -- decisions -------------------------------------------------------------------
    def _move_to_stopping(self, replica: Replica, now: float, grace_s: float = 0.0) -> None:
        self.replicas.move(replica, ReplicaState.STOPPING, now)
        replica.grace_s = grace_s
        replica.stop_sent = replica.kill_sent = False

    def _send_stop(self, replica: Replica, out: BackendUpdate) -> None:
        replica.stop_sent = True
        out.actions.append(Action("stop", replica, graceful_timeout_s=replica.grace_s))

    def _stop(self, replica: Replica, now: float, out: BackendUpdate, graceful: bool = True) -> None:
        self._move_to_stopping(
            replica, now, self.record.config.graceful_shutdown_timeout_s if graceful else 0.0)
        self._send_stop(replica, out)

    def _note_start_failure(self, replica: Replica, why: str, now: float) -> None:
        self._start_failures += 1
        self._last_failure = f"replica {replica.wrapper.actor_name} of backend {self.tag!r} {why}"
        logger.warning("%s", self._last_failure)
        self._next_start_at = now + min(30.0, 0.5 * 2 ** (self._start_failures - 1))

    def _observe(self, now: float, out: BackendUpdate) -> None:
        r = self.record
        timeout = r.config.startup_timeout_s
        for replica in self.replicas.get(ReplicaState.STOPPING):
            if not replica.stop_sent:
                self._send_stop(replica, out)
            elif not replica.kill_sent and replica.wrapper.stop_finished(now):
                replica.kill_sent = True
                out.actions.append(Action("kill", replica))
        for replica in self.replicas.get(ReplicaState.STARTING, ReplicaState.RECOVERING):
            status, err = replica.wrapper.check_ready()
            was_starting = replica.state is ReplicaState.STARTING
            if status is ProbeStatus.SUCCEEDED:
                self.replicas.move(replica, ReplicaState.RUNNING, now)
                if replica.version == r.version:
                    self._start_failures = 0
                    self._last_failure = None
            elif status is ProbeStatus.FAILED:
                if was_starting:
                    self._note_start_failure(replica, f"failed to start: {err}", now)
                else:
                    logger.warning("recovered replica %s is dead (%s); replacing it",
                                   replica.wrapper.actor_name, err)
                self._stop(replica, now, out, graceful=False)
            elif now - replica.since > timeout:
                if was_starting:
                    self._note_start_failure(
                        replica, f"did not become ready within startup_timeout_s={timeout:g}s", now)
                else:
                    self._last_failure = (f"recovered replica {replica.wrapper.actor_name} did not "
                                          f"answer within startup_timeout_s={timeout:g}s; replaced")
                    logger.warning("%s", self._last_failure)
                self._stop(replica, now, out, graceful=False)
        for replica in self.replicas.get(ReplicaState.UPDATING):
            status, err = replica.wrapper.check_reconfigured()
            if status is ProbeStatus.SUCCEEDED:
                self.replicas.move(replica, ReplicaState.RUNNING, now)
            elif status is ProbeStatus.FAILED:
                self._last_failure = (f"reconfigure of replica {replica.wrapper.actor_name} "
                                      f"failed: {err}")
                logger.warning("%s", self._last_failure)
                self._stop(replica, now, out, graceful=True)
        for replica in self.replicas.get(ReplicaState.RUNNING, ReplicaState.UPDATING):
            health = replica.wrapper.check_health(now)
            if health is HealthStatus.DEAD:
                logger.warning("replica %s died; replacing it", replica.wrapper.actor_name)
                self._stop(replica, now, out, graceful=False)
            elif health is HealthStatus.UNHEALTHY:
                logger.warning("replica %s is unhealthy; replacing it", replica.wrapper.actor_name)
                self._stop(replica, now, out, graceful=False)
            elif replica.wrapper.health_due(now):
                out.actions.append(Action("probe", replica))

    def _reconfigure_stale(self, now: float, out: BackendUpdate) -> None:
        r = self.record
        for replica in self.replicas.get(ReplicaState.RUNNING):
            if replica.version == r.version and replica.wrapper.config_version != r.config_version:
                self.replicas.move(replica, ReplicaState.UPDATING, now)
                out.actions.append(Action("reconfigure", replica,
                                          config=r.config.model_dump(mode="json"),
                                          config_version=r.config_version))

    def _scale(self, now: float, out: BackendUpdate) -> None:
        r = self.record
        target = r.target_replicas
        # a recovering replica reports its version once ready; until then count it as current
        current = [x for x in self.replicas.get(*LIVE) if x.version in (r.version, None)]
        old = [x for x in self.replicas.get(*LIVE) if x.version not in (r.version, None)]
        # old replicas that do not serve give no capacity: stop them at once
        for replica in old:
            if replica.state not in (ReplicaState.RUNNING, ReplicaState.UPDATING):
                self._stop(replica, now, out, graceful=False)
        old = [x for x in old if x.state is not ReplicaState.STOPPING]
        if len(current) > target:
            order = {ReplicaState.STARTING: 0, ReplicaState.RECOVERING: 1,
                     ReplicaState.UPDATING: 2, ReplicaState.RUNNING: 3}
            for replica in sorted(current, key=lambda x: order[x.state])[: len(current) - target]:
                self._stop(replica, now, out, graceful=True)
            current = [x for x in current if x.state is not ReplicaState.STOPPING]
        # stop old replicas only while the serving count stays at or above the target
        serving_now = sum(1 for x in current if x.state in SERVING) + len(old)
        for replica in old[: max(0, serving_now - target)]:
            self._stop(replica, now, out, graceful=True)
        old = [x for x in old if x.state is not ReplicaState.STOPPING]
        missing = target - len(current)
        if missing > 0 and now >= self._next_start_at and not r.deleting:
            surge = 1 if old else 0
            slots = target + surge - (len(current) + len(old))
            for _ in range(min(missing, max(0, slots))):
                wrapper = self._factory(self.tag, uuid.uuid4().hex[:8])
                self._configure_health(wrapper)
                replica = Replica(wrapper, ReplicaState.STARTING, since=now)
                out.starts.append(replica)
                out.actions.append(Action("start", replica, spec=self.spec()))

    def _converged(self) -> bool:
        r = self.record
        if r.deleting:
            return len(self.replicas) == 0
        if self.replicas.count(*IN_TRANSIT):
            return False
        running = self.replicas.get(ReplicaState.RUNNING)
        return (len(running) == r.target_replicas
                and all(x.version == r.version and x.wrapper.config_version == r.config_version
                        for x in running))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    # Ray's error strings carry a traceback; the last line names the error
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
