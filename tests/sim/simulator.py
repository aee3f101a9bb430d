"""Deterministic fault simulation of the control plane.

The real ``ServeController`` (RPC handlers, reconciler, goals, record store, recovery) runs
on a fake clock with simulated replicas (``world.SimReplicaWrapper``) and a fault-injecting
store (``world.FaultyStore``). A seeded schedule mixes API calls (valid and invalid),
control ticks, controller crashes at any crash point (every store mutation, every replica
action, and between the writes of a non-atomic transaction), store outages and failed
writes, replica deaths, failed, slow and hung starts, unavailable actors, router death
reports and zombie controllers. After every step it checks the invariants below; at the
end it lets the system quiesce and checks that everything converged.

Invariants (``Simulation.check``):
1. durable: the store holds exactly what every returned call promised (``Model``);
2. nothing refused is visible: a refused call left the model, so the same check covers it;
   memory equals the store (records and goals), before and after restarts;
3. no replica stays STARTING or RECOVERING past ``startup_timeout_s``;
4. no orphan actor (every live actor is named by a stored record) and no duplicate (a start
   of a name that is alive is a violation in the world);
5. a zombie never acts: no write lands and no stop or kill runs for an epoch after a newer
   epoch was claimed;
6. goals: a goal succeeds only when its backend converged (or, for a delete, is gone);
   every goal ends by the end of the run, with an error when it failed;
7. routers never see an empty set for a backend that has serving replicas: what long-poll
   publishes is exactly the serving set, from the first moment after a recovery.

Replay one seed: ``make sim SEED=<n>`` (or ``python -m tests.sim --seed <n> -v``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import serveplane.backend_state.backend as backend_module
import serveplane.controller.goals as goals_module
import serveplane.long_poll.host as host_module
from serveplane.backend_state import ReplicaState
from serveplane.backend_state.backend import SERVING
from serveplane.controller.controller import ServeController
from serveplane.controller.goals import GoalState
from serveplane.controller.persistence import inline_runner
from serveplane.exceptions import KVStoreUnavailableError, ServeplaneError, StaleEpochError
from serveplane.kv_store import MemoryKVStore, RecordStore, StateKey
from serveplane.records import keys
from serveplane.rollout import Rollout, RolloutState
from serveplane.rollout.histogram import N_BUCKETS, bucket_of
from tests.sim.world import (
    FakeClock,
    FaultyStore,
    Owner,
    SimActorDirectory,
    SimReplicaWrapper,
    SimulatedCrash,
    Violation,
    World,
)

NAMESPACE = "sim"
STATE_KEY = StateKey("simulator-state-key-0123456789abcdef", "simulator")
BACKENDS = ("a", "b", "c")
ENDPOINTS = ("e1", "e2")
STARTUP_TIMEOUT_S = 5.0
MAX_TICK_S = 1.0


@dataclass
class Model:
    """What returned calls promised: the expected stored target."""

    backends: dict[str, dict[str, Any]] = field(default_factory=dict)  # tag -> expected fields
    deleted: set[str] = field(default_factory=set)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    goals: dict[str, str] = field(default_factory=dict)  # goal id -> backend


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The controller logs every injected fault; keep a run quiet, and restore the level
    (later tests read the logs)."""
    log = logging.getLogger("serveplane")
    saved = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(saved)


@contextmanager
def seeded_ids(rng: random.Random) -> Iterator[None]:
    """Replica tags, goal ids and long-poll snapshot ids from the seed, so that a run replays
    exactly."""

    class SeededUUID:
        @staticmethod
        def uuid4() -> uuid.UUID:
            return uuid.UUID(int=rng.getrandbits(128), version=4)

    saved = backend_module.uuid, goals_module.uuid, host_module.uuid
    backend_module.uuid = goals_module.uuid = host_module.uuid = SeededUUID  # type: ignore[assignment]
    try:
        yield
    finally:
        backend_module.uuid, goals_module.uuid, host_module.uuid = saved


class Simulation:
    def __init__(self, seed: int, steps: int = 150, atomic: bool | None = None,
                 verbose: bool = False) -> None:
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.atomic = self.rng.random() < 0.6 if atomic is None else atomic
        self.verbose = verbose
        self.clock = FakeClock()
        self.world = World(self.clock, random.Random(seed * 7919 + 1))
        self.store = FaultyStore(self.world, self.atomic)
        self.reader = RecordStore(self.store.inner, namespace=f"serveplane/{NAMESPACE}", key=STATE_KEY)
        self.loop = asyncio.new_event_loop()
        self.model = Model()
        self.ctrl: ServeController | None = None
        self.zombies: list[ServeController] = []
        self.claims: list[tuple[float, int]] = []  # (time, epoch) of every controller start
        self.log: list[str] = []
        self.routers: dict[str, dict[str, Any]] = {}  # one simulated router per endpoint
        self.bad_canary: dict[tuple[str, str], bool] = {}  # (endpoint, canary) -> it fails
        self.stats = {"calls": 0, "refused": 0, "unavailable": 0, "crashes": 0, "zombies": 0,
                      "kills": 0, "ticks": 0, "goals": 0}

    # -- plumbing ---------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.log.append(f"t={self.clock.now:6.1f} {text}")
        if self.verbose:
            print(self.log[-1])

    def run(self) -> dict[str, int]:
        with quiet_logs(), seeded_ids(self.rng):
            try:
                self.boot()
                for i in range(self.steps):
                    self.one_step(i)
                    self.check()
                self.quiesce()
            except Violation as exc:
                raise Violation(f"seed {self.seed}: {exc}\nlast events:\n" + "\n".join(self.log[-25:])) from None
            finally:
                self.loop.close()
        return self.stats

    def run_on(self, ctrl: ServeController, coro: Any) -> Any:
        self.store.writer_epoch = ctrl._epoch
        return self.loop.run_until_complete(coro)

    def boot(self) -> None:
        """Start a controller (recovery); what stops a start (a crash, the store down) is
        retried, as Ray restarts the controller actor."""
        for _ in range(50):
            owner = Owner()
            self.store.writer_epoch = 10**9  # a starting controller owns the newest epoch
            try:
                ctrl = ServeController(
                    self.store.url, NAMESPACE,
                    wrapper_factory=lambda b, t, o=owner: SimReplicaWrapper(self.world, o, b, t),
                    run_loop=False, run_io=inline_runner, run_ray=inline_runner, clock=self.clock,
                    store=self.store, actors=SimActorDirectory(self.world, owner), wall_clock=self.clock,
                    state_key=STATE_KEY)
            except SimulatedCrash:
                self.stats["crashes"] += 1
                continue
            except KVStoreUnavailableError:
                self.store.down = False
                self.store.fail_writes = 0
                self.clock.now += 1.0
                continue
            owner.epoch = ctrl._epoch
            self.claims.append((next(self.world.seq), ctrl._epoch))
            self.ctrl = ctrl
            self.note(f"controller epoch {ctrl._epoch} started ({'atomic' if self.atomic else 'undo-logged'} store)")
            self.check_published()
            return
        raise Violation("the controller could not start in 50 tries")

    def crashed(self) -> None:
        self.stats["crashes"] += 1
        self.note("controller crashed")
        self.ctrl = None
        self.boot()

    # -- the schedule -------------------------------------------------------------------
    def one_step(self, i: int) -> None:
        roll = self.rng.random()
        if roll < 0.4:
            self.api_call()
        elif roll < 0.75:
            self.tick()
        else:
            self.fault()

    def tick(self) -> None:
        self.clock.now += self.rng.choice((0.1, 0.1, 0.3, MAX_TICK_S))
        self.stats["ticks"] += 1
        for zombie in list(self.zombies):
            try:
                self.run_on(zombie, zombie.control_step(self.clock.now))
            except StaleEpochError:
                self.zombies.remove(zombie)
                self.note(f"zombie epoch {zombie._epoch} stopped")
            except (SimulatedCrash, KVStoreUnavailableError):
                self.zombies.remove(zombie)
        assert self.ctrl is not None
        for ep, record in self.ctrl._endpoints.records().items():  # live traffic during rollouts
            if record.rollout is not None and record.rollout.active:
                self.router_report(ep, bad=self.bad_canary.get((ep, record.rollout.backend), False))
        before = self.goal_states()
        try:
            self.run_on(self.ctrl, self.ctrl.control_step(self.clock.now))
        except SimulatedCrash:
            self.crashed()
            return
        except StaleEpochError as exc:
            raise Violation(f"the live controller was fenced out: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the loop would log it, but the step was cut short
            raise Violation(f"the control step raised {exc!r}; its remaining work was skipped") from None
        self.check_goal_transitions(before)

    def api_call(self) -> None:
        r = self.rng
        kind = r.choice(("create_backend", "create_backend", "update_config", "update_code",
                         "delete_backend", "create_endpoint", "set_traffic", "shadow",
                         "delete_endpoint", "wait_unknown", "rollout", "rollout", "move_rollout"))
        tag, other = r.choice(BACKENDS), r.choice(BACKENDS)
        ep = r.choice(ENDPOINTS)
        if kind == "create_backend":
            cfg = {"num_replicas": r.choice((0, 1, 2, 3)), "user_config": {"v": r.randint(0, 2)},
                   "startup_timeout_s": STARTUP_TIMEOUT_S, "graceful_shutdown_timeout_s": r.choice((0.0, 2.0)),
                   "health_check_period_s": r.choice((1.0, 10.0)), "health_check_timeout_s": 3.0}
            code = f"code-{tag}-{r.randint(0, 1)}".encode()
            self.call("create_backend", (tag, code, b"init", {}, cfg),
                      lambda res: self.expect_backend(tag, code, cfg, res))
        elif kind == "update_config":
            update = r.choice(({"num_replicas": r.choice((0, 1, 2, 3))}, {"user_config": {"v": r.randint(0, 3)}},
                               {"max_batch_size": r.choice((2, 6))}, {"num_replicas": -1}))
            self.call("update_backend_config", (tag, update),
                      lambda res: self.expect_backend_update(tag, update, None, res))
        elif kind == "update_code":
            code = f"code-{tag}-{r.randint(2, 4)}".encode()
            self.call("update_backend", (tag, code, None, None, None),
                      lambda res: self.expect_backend_update(tag, {}, code, res))
        elif kind == "delete_backend":
            self.call("delete_backend", (tag, r.random() < 0.5), lambda res: self.expect_deleted(tag, res))
        elif kind == "create_endpoint":
            route = f"/{ep}"
            self.call("create_endpoint", (ep, tag, route, ["GET"]),
                      lambda res: self.model.endpoints.setdefault(
                          ep, {"traffic": {tag: 1.0}, "shadows": {}, "route": route}))
        elif kind == "set_traffic":
            w = r.choice((1.0, 0.5, 0.3))
            traffic = {tag: 1.0} if tag == other or w == 1.0 else {tag: w, other: round(1 - w, 6)}
            if r.random() < 0.1:
                traffic = {tag: 0.7}  # invalid: does not sum to 1
            def traffic_set(res: Any) -> None:
                expected = self.model.endpoints[ep]
                if expected.pop("owned", False):  # the operator takes over from the rollout
                    expected["shadows"] = dict(self.stored()[f"endpoint/{ep}"]["shadows"])
                expected["traffic"] = traffic

            self.call("set_traffic", (ep, traffic), traffic_set)
        elif kind == "shadow":
            p = r.choice((0.0, 0.5, 1.0))

            def shadowed(res: Any) -> None:
                expected = self.model.endpoints[ep]
                if expected.pop("owned", False):  # the operator takes over from the rollout
                    record = self.stored()[f"endpoint/{ep}"]
                    expected["traffic"], expected["shadows"] = dict(record["traffic"]), dict(record["shadows"])
                    if expected["shadows"].get(tag, 0.0) != p:
                        raise Violation(f"shadow_traffic({ep}, {tag}, {p}) returned but is not stored")
                    return
                shadows = expected["shadows"]
                if p == 0.0:
                    shadows.pop(tag, None)
                else:
                    shadows[tag] = p

            self.call("shadow_traffic", (ep, tag, p), shadowed)
        elif kind == "delete_endpoint":
            self.call("delete_endpoint", (ep,), lambda res: self.model.endpoints.pop(ep, None))
        elif kind == "rollout":
            steps = sorted(r.sample((0.1, 0.25, 0.5, 1.0), r.randint(1, 3)))
            guards = {"max_error_rate": 0.1, "min_requests": r.choice((5, 20))}
            if r.random() < 0.1:
                guards = {"max_errors": 1}  # invalid: an unknown guard
            self.bad_canary[(ep, tag)] = r.random() < 0.3
            self.call("start_rollout", (ep, tag, steps, r.choice((0.5, 2.0)), guards, r.choice((0.0, 0.0, 1.0))),
                      lambda res: self.model.endpoints[ep].update(owned=True))
        elif kind == "move_rollout":
            move = r.choice(("pause_rollout", "resume_rollout", "abort_rollout"))
            self.call(move, (ep,), lambda res: self.model.endpoints[ep].update(owned=True))
        else:
            assert self.ctrl is not None
            try:
                self.run_on(self.ctrl, self.ctrl.wait_for_goal(uuid.UUID(int=r.getrandbits(128)).hex, 0.0))
            except ServeplaneError:
                return
            raise Violation("an unknown goal id was answered as if it existed")

    def call(self, method: str, args: tuple, on_ok: Any) -> None:
        """One client call; a controller crash makes the client retry on the successor, as
        ``Client._call`` does."""
        self.stats["calls"] += 1
        for _ in range(20):
            assert self.ctrl is not None
            try:
                result = self.run_on(self.ctrl, getattr(self.ctrl, method)(*args))
            except SimulatedCrash:
                self.crashed()
                continue
            except KVStoreUnavailableError as exc:
                self.stats["unavailable"] += 1
                self.note(f"{method}{args[:2]} -> store unavailable ({str(exc)[:60]})")
                return
            except StaleEpochError as exc:
                raise Violation(f"the live controller refused {method} as stale: {exc}") from None
            except (ServeplaneError, ValueError) as exc:
                self.stats["refused"] += 1
                self.note(f"{method}{args[:2]} -> refused: {str(exc)[:70]}")
                return
            self.note(f"{method}{args[:2]} -> {result}")
            on_ok(result)
            return
        raise Violation(f"{method} never completed through 20 controller crashes")

    def fault(self) -> None:
        r, w = self.rng, self.world
        kind = r.choice(("outage", "fail_write", "crash", "crash", "kill", "kill", "start_fail",
                         "slow", "hang", "unavailable", "zombie", "report", "traffic", "traffic"))
        now = self.clock.now
        alive = w.alive()
        if kind == "outage":
            self.store.down = not self.store.down
            self.note(f"store {'down' if self.store.down else 'back'}")
        elif kind == "fail_write":
            self.store.fail_writes = r.randint(1, 3)
            self.note(f"store write {self.store.fail_writes} from now fails")
        elif kind == "crash":
            w.crash_in = r.randint(1, 8)
            self.note(f"the controller crashes at the {w.crash_in}th crash point from now")
        elif kind == "kill" and alive:
            victim = r.choice(alive)
            w.kill(victim.name)
            self.stats["kills"] += 1
            self.note(f"replica {victim.name} died")
        elif kind == "start_fail":
            w.start_failures = 3
            self.note("the next 3 replica starts raise")
        elif kind == "slow":
            w.slow_starts = not w.slow_starts
            self.note(f"slow starts {'on' if w.slow_starts else 'off'}")
        elif kind == "hang" and alive:
            victim = r.choice(alive)
            victim.hung_until = now + r.choice((2.0, 60.0))
            self.note(f"replica {victim.name} hangs")
        elif kind == "unavailable" and alive:
            victim = r.choice(alive)
            victim.unavailable_until = now + r.choice((0.5, 3.0))
            self.note(f"replica {victim.name} unavailable")
        elif kind == "zombie" and self.ctrl is not None and not self.store.down:
            old = self.ctrl
            self.boot()
            if self.ctrl is not old:
                self.zombies.append(old)
                self.stats["zombies"] += 1
                self.note(f"epoch {old._epoch} lives on as a zombie")
        elif kind == "traffic" and self.ctrl is not None:
            self.router_report(r.choice(ENDPOINTS), bad=r.random() < 0.3)
        elif kind == "report" and self.ctrl is not None:
            dead = [a for a in w.actors.values() if not a.alive]
            if dead:
                victim = r.choice(dead)
                self.run_on(self.ctrl, self.ctrl.report_replica_failure(victim.backend, victim.name))

    def router_report(self, ep: str, bad: bool) -> None:
        """A router of ``ep`` reports cumulative figures: some answers from every backend, a
        bad canary failing half of its own."""
        assert self.ctrl is not None
        router = self.routers.setdefault(ep, {"id": f"{ep}:{len(self.routers)}", "started_at": self.clock.now,
                                              "backends": {}, "shadows": {}})
        for backend in BACKENDS:
            figures = router["backends"].setdefault(backend, {
                "requests": 0, "app_errors": 0, "replica_failures": 0, "latency": [0] * N_BUCKETS,
                "latency_sum_s": 0.0})
            n = self.rng.randint(0, 30)
            figures["requests"] += n
            figures["app_errors"] += n // 2 if bad else 0
            figures["latency"][bucket_of(0.002)] += n
            shadow = router["shadows"].setdefault(backend, {"compared": 0, "agreed": 0, "errors": 0,
                                                            "count": 0, "agreement": None,
                                                            "avg_latency_s": 0.0})
            shadow["compared"] += n
            shadow["agreed"] += 0 if bad else n
        stats = {"endpoint": ep, "started_at": router["started_at"],
                 "backends": {b: dict(f, latency=list(f["latency"])) for b, f in router["backends"].items()},
                 "shadows": {b: dict(f) for b, f in router["shadows"].items()}}
        self.run_on(self.ctrl, self.ctrl.record_handle_metrics(router["id"], {}, stats))

    # -- the model ----------------------------------------------------------------------
    def expect_backend(self, tag: str, code: bytes, cfg: dict[str, Any], goal: Any) -> None:
        import hashlib

        if tag not in self.model.backends:
            self.model.backends[tag] = {"code_hash": hashlib.sha256(code).hexdigest(),
                                        "num_replicas": cfg["num_replicas"],
                                        "user_config": cfg["user_config"], "max_batch_size": None}
            self.model.deleted.discard(tag)
        self.track_goal(goal, tag)

    def expect_backend_update(self, tag: str, update: dict[str, Any], code: bytes | None, goal: Any) -> None:
        import hashlib

        expected = self.model.backends[tag]
        expected.update(update)
        if code is not None:
            expected["code_hash"] = hashlib.sha256(code).hexdigest()
        self.track_goal(goal, tag)

    def expect_deleted(self, tag: str, goal: Any) -> None:
        if tag in self.model.backends:
            del self.model.backends[tag]
            self.model.deleted.add(tag)
        self.track_goal(goal, tag)

    def track_goal(self, goal: Any, tag: str) -> None:
        if goal is not None:
            self.model.goals[goal] = tag
            self.stats["goals"] += 1

    # -- invariants -----------------------------------------------------------------------
    def goal_states(self) -> dict[str, GoalState]:
        assert self.ctrl is not None
        return {gid: self.ctrl._goals.get(gid).state for gid in self.ctrl._goals.pending()}

    def check_goal_transitions(self, before: dict[str, GoalState]) -> None:
        ctrl = self.ctrl
        assert ctrl is not None
        for gid in before:
            goal = ctrl._goals.get(gid)
            if goal.state is GoalState.SUCCEEDED:
                state = ctrl._backends.get_any(goal.backend)
                if goal.kind == "delete":
                    if state is not None:
                        raise Violation(f"delete goal {gid} succeeded while backend {goal.backend} exists")
                elif state is None or not state._converged():
                    raise Violation(f"goal {gid} ({goal.kind} {goal.backend}) succeeded before convergence")
            elif goal.state is GoalState.FAILED and (not goal.error or goal.kind == "delete"):
                raise Violation(f"goal {gid} ({goal.kind} {goal.backend}) failed: {goal.error!r}; "
                                "a delete cannot fail and a failure needs a reason")

    def stored(self) -> dict[str, dict[str, Any]]:
        """The records as the next reader finds them: on the undo-logged store an unfinished
        change (its writer failed) is rolled back first, on a scratch copy."""
        inner = self.store.inner
        if self.atomic or inner.get(f"serveplane/{NAMESPACE}/txn") is None:
            return self.reader.read_all()
        scratch = MemoryKVStore()
        for key in inner.list(""):
            scratch.put(key, inner.get(key) or b"")
        settled = RecordStore(scratch, namespace=f"serveplane/{NAMESPACE}", key=STATE_KEY)
        settled.atomic = False
        settled.settle()
        return settled.read_all()

    def check(self) -> None:
        self.check_no_orphans()
        self.check_zombies()
        if self.ctrl is None:
            return
        stored = self.stored()
        self.check_model(stored)
        self.check_memory_equals_store(stored)
        self.check_timeouts()
        self.check_published()

    def check_model(self, stored: dict[str, dict[str, Any]]) -> None:
        for tag, expected in self.model.backends.items():
            record = stored.get(f"backend/{tag}")
            if record is None or record["deleting"]:
                raise Violation(f"backend {tag} was created and not deleted, but the store lacks it")
            got = {"code_hash": record["code_hash"], "num_replicas": record["config"]["num_replicas"],
                   "user_config": record["config"]["user_config"],
                   "max_batch_size": record["config"]["max_batch_size"]}
            if got != expected:
                raise Violation(f"backend {tag}: stored {got}, promised {expected}")
        for tag in self.model.deleted:
            record = stored.get(f"backend/{tag}")
            if record is not None and not record["deleting"]:
                raise Violation(f"backend {tag} was deleted but is stored live")
        for tag in BACKENDS:
            if tag not in self.model.backends and tag not in self.model.deleted \
                    and f"backend/{tag}" in stored:
                raise Violation(f"backend {tag} is stored but no call that returned created it")
        for name in ENDPOINTS:
            record = stored.get(f"endpoint/{name}")
            expected = self.model.endpoints.get(name)
            if expected is None:
                if record is not None:
                    raise Violation(f"endpoint {name} is stored but was never created or was deleted")
                continue
            if record is None:
                raise Violation(f"endpoint {name} was created but the store lacks it")
            if expected.get("owned"):  # a rollout owns the traffic: it must be what it says
                if record["rollout"] is None:
                    raise Violation(f"endpoint {name}: a rollout was started but none is stored")
                rollout = Rollout.model_validate(record["rollout"])
                if (record["traffic"], record["shadows"]) != rollout.routing():
                    raise Violation(f"endpoint {name}: stored traffic {record['traffic']} / shadows "
                                    f"{record['shadows']} differ from its {rollout.state.value} rollout's "
                                    f"{rollout.routing()}")
                self.check_steps(name, rollout)
                continue
            got = {"traffic": record["traffic"], "shadows": record["shadows"], "route": record["route"]}
            if got != expected:
                raise Violation(f"endpoint {name}: stored {got}, promised {expected}")

    def check_steps(self, name: str, rollout: Rollout) -> None:
        """A rollout takes its steps one at a time and succeeds only after the last."""
        taken = [h.step for h in rollout.history if h.decision.startswith("advanced to step")]
        if taken != list(range(taken[0], taken[0] + len(taken))) if taken else False:
            raise Violation(f"endpoint {name}: rollout steps taken {taken} skip or repeat one")
        for h in rollout.history:
            if h.decision.startswith(("advanced", "succeeded")):
                seen = h.readings.get("canary_requests", h.readings.get("shadow_compared", 0))
                if seen < rollout.guards.min_requests:
                    raise Violation(f"endpoint {name}: rollout '{h.decision}' on {seen} samples, "
                                    f"fewer than min_requests {rollout.guards.min_requests}")
        if rollout.state is RolloutState.SUCCEEDED and rollout.step != len(rollout.steps) - 1:
            raise Violation(f"endpoint {name}: rollout succeeded at step {rollout.step} of {len(rollout.steps)}")

    def check_memory_equals_store(self, stored: dict[str, dict[str, Any]]) -> None:
        ctrl = self.ctrl
        assert ctrl is not None
        memory: dict[str, Any] = {}
        for state in ctrl._backends:
            memory[f"backend/{state.tag}"] = state.record.model_dump(mode="json")
            live = {r.tag for r in state.replicas}
            if not live <= set(state.record.replica_tags):
                raise Violation(f"backend {state.tag}: replicas {live - set(state.record.replica_tags)} "
                                "are not in its stored record")
        for name, record in ctrl._endpoints.records().items():
            memory[f"endpoint/{name}"] = record.model_dump(mode="json")
        for gid in ctrl._goals.pending():
            memory[f"goal/{gid}"] = ctrl._goals.get(gid).payload()
        if ctrl._goals.finished_payload() is not None:
            memory["goals/finished"] = ctrl._goals.finished_payload()
        if memory != stored:
            diff = sorted(k for k in set(memory) | set(stored) if memory.get(k) != stored.get(k))
            raise Violation(f"memory and store differ at {diff}: memory {[memory.get(k) for k in diff][:2]}, "
                            f"store {[stored.get(k) for k in diff][:2]}")

    def check_timeouts(self) -> None:
        assert self.ctrl is not None
        now = self.clock.now
        for state in self.ctrl._backends:
            limit = state.record.config.startup_timeout_s + MAX_TICK_S + 0.01
            for replica in state.replicas.get(ReplicaState.STARTING, ReplicaState.RECOVERING):
                if now - replica.since > limit:
                    raise Violation(f"replica {replica.wrapper.actor_name} has been {replica.state.value} "
                                    f"for {now - replica.since:.1f}s (timeout {limit:.1f}s)")

    def check_no_orphans(self) -> None:
        stored = self.stored()
        named = {f"serveplane:{r['tag']}#{t}" for k, r in stored.items() if k.startswith("backend/")
                 for t in r["replica_tags"]}
        for actor in self.world.alive():
            if actor.name not in named:
                raise Violation(f"orphan: actor {actor.name} is alive but no stored record names it")

    def check_zombies(self) -> None:
        for at, epoch, what in self.store.writes_by_epoch + self.world.destructive_by_epoch:
            newer = [e for t, e in self.claims if e > epoch and t < at]
            if newer and epoch != 10**9:
                raise Violation(f"zombie: epoch {epoch} did '{what}' after epoch {newer[0]} started")
        self.store.writes_by_epoch.clear()
        self.world.destructive_by_epoch.clear()

    def check_published(self) -> None:
        ctrl = self.ctrl
        assert ctrl is not None
        for state in ctrl._backends:
            if state.record.deleting:
                continue
            entry = ctrl._long_poll.get(keys.replicas(state.tag))
            published = {info.actor_name for info in (entry.value if entry is not None else ())}
            serving = {r.wrapper.actor_name for r in state.replicas.get(*SERVING)}
            if published != serving:
                raise Violation(f"backend {state.tag}: routers see {sorted(published)}, "
                                f"serving replicas are {sorted(serving)}")
            # against the world, not memory: a live, constructed actor the controller keeps
            # (any state but STOPPING) means routers must have somewhere to send requests
            kept = {r.wrapper.actor_name for r in state.replicas if r.state is not ReplicaState.STOPPING}
            up = {a.name for a in self.world.alive(state.tag)
                  if not a.ctor_fails and a.ready_at <= self.clock.now and a.hung_until < self.clock.now}
            if kept & up and not published:
                raise Violation(f"backend {state.tag}: routers see no replicas while "
                                f"{sorted(kept & up)} are up")

    # -- the end ----------------------------------------------------------------------------
    def quiesce(self) -> None:
        """No more faults: everything must converge and every goal must end."""
        self.note("quiesce")
        self.store.down = False
        self.store.fail_writes = 0
        self.world.crash_in = None
        self.world.start_failures = 0
        self.world.slow_starts = False
        for actor in self.world.actors.values():
            actor.hung_until = actor.unavailable_until = -1.0
        ctrl = self.ctrl
        assert ctrl is not None
        for _ in range(400):
            self.tick()
            self.check()
            ctrl = self.ctrl
            assert ctrl is not None
            done = not ctrl._goals.pending() and all(
                s._converged() for s in ctrl._backends) and not self.zombies
            if done:
                break
        else:
            states = {s.tag: (s.replicas.summary(), s.record.target_replicas, s.status()["failure"])
                      for s in ctrl._backends}
            raise Violation(f"did not converge after 400 quiet ticks: {states}, "
                            f"pending goals {ctrl._goals.pending()}")
        for gid, tag in self.model.goals.items():
            outcome = self.run_on(ctrl, ctrl.wait_for_goal(gid, 0.0))
            if not outcome["done"]:
                raise Violation(f"goal {gid} of backend {tag} never ended")
        known = {r.wrapper.actor_name for s in ctrl._backends for r in s.replicas}
        stray = {a.name for a in self.world.alive()} - known
        if stray:
            raise Violation(f"actors alive that the controller does not know: {sorted(stray)}")


def run_seed(seed: int, steps: int = 150, verbose: bool = False) -> dict[str, int]:
    return Simulation(seed, steps=steps, verbose=verbose).run()
