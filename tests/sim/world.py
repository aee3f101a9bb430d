"""The simulated world the real controller runs in: a fake clock, replica actors that start,
die, hang and come back, and a store that fails or takes the controller down with it.

Everything is driven by one seeded ``random.Random``; nothing reads the wall clock, so a
seed replays exactly.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from serveplane.backend_state.replica import HealthStatus, ProbeStatus
from serveplane.exceptions import KVStoreUnavailableError
from serveplane.kv_store import MemoryKVStore
from serveplane.records import replica_actor_name


class SimulatedCrash(BaseException):
    """The controller process dies here. A ``BaseException``, so that no ``except
    Exception`` in the controller can swallow it: the call simply never returns."""


class Violation(AssertionError):
    """An invariant broke."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SimActor:
    name: str
    backend: str
    version: str
    config_version: str
    started_at: float
    ready_at: float
    ctor_fails: bool = False
    alive: bool = True
    hung_until: float = -math.inf        # health checks get no answer (a slow actor)
    unavailable_until: float = -math.inf  # ActorUnavailableError (transient)
    drain_s: float = 0.0
    reconfigured_at: float = math.inf
    pending_config_version: str | None = None


@dataclass
class World:
    """Every replica actor that exists, and what happened to them."""

    clock: FakeClock
    rng: random.Random
    actors: dict[str, SimActor] = field(default_factory=dict)
    start_failures: int = 0           # the next N starts raise (Ray refuses the options)
    slow_starts: bool = False
    crash_in: int | None = None       # crash the controller at the N-th crash point from now
    events: list[str] = field(default_factory=list)
    destructive_by_epoch: list[tuple[int, int, str]] = field(default_factory=list)
    seq: Iterator[int] = field(default_factory=itertools.count)  # orders events across controllers

    def crash_point(self, what: str) -> None:
        if self.crash_in is None:
            return
        self.crash_in -= 1
        if self.crash_in <= 0:
            self.crash_in = None
            self.events.append(f"t={self.clock.now:.1f} controller crashed at {what}")
            raise SimulatedCrash(what)

    def alive(self, backend: str | None = None) -> list[SimActor]:
        return [a for a in self.actors.values() if a.alive and (backend is None or a.backend == backend)]

    def kill(self, name: str) -> None:
        actor = self.actors.get(name)
        if actor is not None and actor.alive:
            actor.alive = False


class SimReplicaWrapper:
    """``ReplicaActorWrapper``'s contract over the simulated world: observations read the
    world, actions change it (and are crash points)."""

    def __init__(self, world: World, owner: Owner, backend: str, replica_tag: str) -> None:
        self.world = world
        self.owner = owner
        self.backend = backend
        self.replica_tag = replica_tag
        self.actor_name = replica_actor_name(backend, replica_tag)
        self.actor_handle: Any = self.actor_name
        self.version: str | None = None
        self.config_version: str | None = None
        self.node_id: str | None = "node-0"
        self._ready_pending = False
        self._reconfiguring: str | None = None
        self._health_sent_at: float | None = None
        self._next_health_at = 0.0
        self._health_failures = 0
        self._period, self._timeout, self._threshold = 10.0, 30.0, 3
        self._stop_deadline = -math.inf
        self._stop_started: float | None = None

    def _actor(self) -> SimActor | None:
        actor = self.world.actors.get(self.actor_name)
        return actor if actor is not None and actor.alive else None

    def _act(self, what: str, destructive: bool = False) -> None:
        self.world.crash_point(f"{what} {self.actor_name}")
        if destructive:
            self.world.destructive_by_epoch.append((next(self.world.seq), self.owner.epoch,
                                                    f"{what} {self.actor_name}"))

    # observations ------------------------------------------------------------------
    def set_health_options(self, period_s: float, timeout_s: float, threshold: int) -> None:
        self._period, self._timeout, self._threshold = period_s, timeout_s, threshold

    def recover(self) -> bool:
        if self._actor() is None:
            return False
        self._ready_pending = True
        return True

    def check_ready(self) -> tuple[ProbeStatus, str | None]:
        actor = self._actor()
        if actor is None:
            return ProbeStatus.FAILED, "ActorDiedError: the actor died"
        if actor.ctor_fails:
            return ProbeStatus.FAILED, "ValueError: constructor raised"
        if self.world.clock.now < actor.ready_at:
            return ProbeStatus.PENDING, None
        if self.version is None:
            self.version, self.config_version = actor.version, actor.config_version
        return ProbeStatus.SUCCEEDED, None

    def check_reconfigured(self) -> tuple[ProbeStatus, str | None]:
        actor = self._actor()
        if actor is None:
            return ProbeStatus.FAILED, "ActorDiedError: the actor died"
        if self.world.clock.now >= actor.reconfigured_at and actor.pending_config_version is not None:
            actor.config_version = actor.pending_config_version
            actor.pending_config_version = None
        if actor.pending_config_version is None:
            return ProbeStatus.SUCCEEDED, None
        return ProbeStatus.PENDING, None

    def next_health_at(self) -> float:
        return self._next_health_at if self._health_sent_at is None else -math.inf

    def health_due(self, now: float) -> bool:
        return self._health_sent_at is None and now >= self._next_health_at

    def check_health(self, now: float) -> HealthStatus:
        if self._health_sent_at is None:
            return HealthStatus.HEALTHY
        actor = self.world.actors.get(self.actor_name)
        if actor is None or not actor.alive:
            self._health_sent_at = None
            return HealthStatus.DEAD
        if now < actor.hung_until:
            if now - self._health_sent_at > self._timeout:
                self._health_sent_at = None
                return HealthStatus.UNHEALTHY
            return HealthStatus.HEALTHY
        self._health_sent_at = None
        if now < actor.unavailable_until:  # transient: a failed check, retried soon
            self._health_failures += 1
            self._next_health_at = min(self._next_health_at, now + 0.5)
            return HealthStatus.UNHEALTHY if self._health_failures >= self._threshold else HealthStatus.HEALTHY
        self._health_failures = 0
        return HealthStatus.HEALTHY

    def stop_finished(self, now: float) -> bool:
        actor = self._actor()
        if actor is None or self._stop_started is None:
            return True  # gone already, or never asked to drain (a failed start)
        return now >= min(self._stop_deadline, self._stop_started + actor.drain_s)

    # actions -----------------------------------------------------------------------
    def start(self, spec: Any) -> None:
        self._act("start")
        if self.world.start_failures > 0:
            self.world.start_failures -= 1
            raise ValueError("Resource 'GPU' is not a valid custom resource; use num_gpus instead")
        if self._actor() is not None:
            raise Violation(f"duplicate actor: {self.actor_name} started while one is alive")
        now = self.world.clock.now
        delay = self.world.rng.choice((0.1, 0.3, 1.0, 20.0)) if self.world.slow_starts else 0.1
        self.world.actors[self.actor_name] = SimActor(
            self.actor_name, self.backend, spec.version, spec.config_version, now, now + delay,
            ctor_fails=self.world.rng.random() < 0.05, drain_s=self.world.rng.choice((0.0, 0.5, 3.0)))
        self.version, self.config_version = spec.version, spec.config_version

    def reconfigure(self, config: Mapping[str, Any], config_version: str) -> None:
        self._act("reconfigure")
        actor = self._actor()
        if actor is None:
            raise ValueError("ActorDiedError: the actor died")
        actor.pending_config_version = config_version
        actor.reconfigured_at = self.world.clock.now + self.world.rng.choice((0.0, 0.2, 1.0))
        self.config_version = config_version

    def send_health_check(self, now: float) -> None:
        self._act("probe")
        self._health_sent_at = now
        self._next_health_at = now + self._period

    def probe_now(self) -> None:
        self._next_health_at = -math.inf

    def begin_stop(self, graceful_timeout_s: float, now: float) -> None:
        self._act("stop", destructive=True)
        self._stop_started = now
        self._stop_deadline = now + graceful_timeout_s

    def kill(self) -> None:
        self._act("kill", destructive=True)
        self.world.kill(self.actor_name)


@dataclass
class Owner:
    """Which controller a wrapper belongs to (its epoch is known once it is constructed)."""

    epoch: int = -1


class FaultyStore:
    """A ``MemoryKVStore`` with faults: an outage (every call raises), one failing write, and
    crash points at every mutating call. A failing write fails either before it applies or
    after (its reply lost: the change is in the store, the caller sees an error), half of each,
    on every store. ``atomic=False`` makes ``transact`` apply its writes one by one with a
    crash point between them, like the Ray GCS store."""

    def __init__(self, world: World, atomic: bool) -> None:
        self.inner = MemoryKVStore()
        self.url = "memory://sim"
        self.world = world
        self.atomic_transactions = atomic
        self.down = False
        self.fail_writes = 0
        self.lost_replies = 0  # how many writes applied and then raised
        self.writes_by_epoch: list[tuple[int, int, str]] = []
        self.writer_epoch = -1  # set by the simulation around each controller's calls

    def _check(self, operation: str) -> None:
        if self.down:
            raise KVStoreUnavailableError(self.url, operation, "connection refused (simulated outage)")

    def _mutating(self, operation: str) -> bool:
        """Faults before the write; True when this write must raise after it applied."""
        self._check(operation)
        self.world.crash_point(f"store {operation}")
        if self.fail_writes > 0:
            self.fail_writes -= 1
            if self.fail_writes == 0:
                if self.world.rng.random() < 0.5:
                    return True
                raise KVStoreUnavailableError(self.url, operation, "write failed (simulated)")
        return False

    def _reply_lost(self, operation: str) -> KVStoreUnavailableError:
        self.lost_replies += 1
        return KVStoreUnavailableError(self.url, operation, "reply lost after the write applied (simulated)")

    def get(self, key: str) -> bytes | None:
        self._check(f"get {key!r}")
        return self.inner.get(key)

    def list(self, prefix: str) -> list[str]:
        self._check(f"list {prefix!r}")
        return self.inner.list(prefix)

    def put(self, key: str, value: bytes) -> None:
        lost = self._mutating(f"put {key!r}")
        self.inner.put(key, value)
        if lost:
            raise self._reply_lost(f"put {key!r}")

    def delete(self, key: str) -> None:
        lost = self._mutating(f"delete {key!r}")
        self.inner.delete(key)
        if lost:
            raise self._reply_lost(f"delete {key!r}")

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        lost = self._mutating(f"compare_and_set {key!r}")
        done = self.inner.compare_and_set(key, expected, new)
        if lost:
            raise self._reply_lost(f"compare_and_set {key!r}")
        return done

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        lost = self._mutating("transact")
        if self.atomic_transactions:
            done = self.inner.transact(checks, writes)
        elif any(self.inner.get(k) != v for k, v in checks.items()):
            done = False
        else:
            for i, (key, value) in enumerate(writes.items()):
                if i:
                    self.world.crash_point(f"store transact write {i}")
                if value is None:
                    self.inner.delete(key)
                else:
                    self.inner.put(key, value)
            done = True
        if done and any("/records/" in k for k in writes):
            self.writes_by_epoch.append((next(self.world.seq), self.writer_epoch, "a record write"))
        if lost:
            raise self._reply_lost("transact")
        return done

    def close(self) -> None:
        pass


class SimActorDirectory:
    """What ``ray.util.list_named_actors`` and ``ray.kill`` are to the orphan sweep."""

    def __init__(self, world: World, owner: Owner) -> None:
        self.world = world
        self.owner = owner

    def replica_names(self) -> list[str]:
        return sorted(a.name for a in self.world.alive())

    def kill(self, name: str) -> None:
        self.world.crash_point(f"sweep kill {name}")
        self.world.destructive_by_epoch.append((next(self.world.seq), self.owner.epoch, f"sweep kill {name}"))
        self.world.kill(name)
