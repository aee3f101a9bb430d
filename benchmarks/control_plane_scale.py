"""Control-plane scale with fake replicas (no Ray), on a SQLite store.

Everything runs in one event loop on a fake clock: store I/O and replica actions run inline
(``inline_runner``), so the figures are the controller's own CPU plus SQLite, and no timing
depends on a sleep. SQLite runs as the controller configures it (WAL, ``synchronous=FULL``),
so every write waits for an fsync: the "store I/O" column shows how much of a tick that is.

1. **Tick cost** at 1k / 10k / 100k replicas (100 / 1,000 / 10,000 backends x 10 replicas,
   one endpoint each). The backends are created through the RPC, spread over one
   health-check period, so that health checks fall due at their natural rate (period 10 s,
   the clock advancing 0.1 s a tick: about 1/100 of the replicas a tick, each check visiting
   its backend twice: send, then read the answer). Then each measured tick follows exactly
   one change: an ``update_backend_config`` that toggles ``num_replicas`` between 10 and 11
   on one backend (rotating over ``ROTATION`` backends, so each change converges before its
   backend changes again). Reported: median and p95 tick, backends visited per tick, the
   change RPC. Baseline, same run, same state, same one change per tick: the "visit
   everything" tick, with every backend marked active first (what a tick cost before
   ``BackendStateManager.due``).
2. **Recovery time** at the same sizes: a successor controller on the same SQLite file
   (its fake replicas are found again), median of 3. Baseline: ``RecordStore.read_all`` of
   the same file alone, the part no controller can skip.
3. **Recovery time vs history**: 10 backends x 2 replicas and 10 endpoints, after 10 / 100 /
   1,000 / 10,000 calls (set_traffic, user_config and num_replicas updates, endpoint
   create and delete; each goal stepped to completion), each on a fresh store, then
   successors on it, median of 3. Baseline: the 10-call row. Recovery should be flat; the
   output says so when it is not.
4. **Long-poll fan-out**: 1000 listeners on one key, time from notify to all answered, while
   1000 listeners of other keys must stay asleep.

``--quick`` runs 10 and 100 backends and 10 and 100 historical calls (about a second).

How the states are built, so that 100k replicas build in seconds: the controller runs on a
``ForwardingStore`` over ``memory://`` (no fsync per RPC) until the state is built (or the
history made), then every key is copied into the SQLite file in one transaction and the same
controller goes on there. The endpoints (one per backend) are written into the store as records at that copy,
not created through ``create_endpoint``: the tick never touches them, recovery loads them,
and the build then does not depend on the endpoint RPC's cost at 10,000 endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from serveplane.backend_state.fake import FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.controller.persistence import inline_runner
from serveplane.endpoint_state import EndpointRecord
from serveplane.kv_store import KVStore, RecordStore, StateKey, open_store
from serveplane.long_poll import LongPollHost

T = TypeVar("T")

TEST_KEY = StateKey("benchmark-state-key-0123456789abcdef", "benchmark")

TICK_S = 0.1             # the control loop's period; the fake clock advances this much a tick
HEALTH_PERIOD_S = 10.0   # BackendConfig.health_check_period_s default
ROTATION = 4             # backends the one-change-per-tick load rotates over
WARMUP_TICKS = 2 * ROTATION
MAX_BUILD_TICKS = 10_000
RECOVERIES = 3
NOT_FLAT_RATIO = 1.5     # history recovery slower than this x the 10-call row: not flat


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = TICK_S) -> float:
        self.now += seconds
        return self.now


class ForwardingStore:
    """A ``KVStore`` that forwards every call to ``target`` and adds up the seconds spent
    there. ``move_to`` copies every key into another store in one transaction and forwards
    there from then on."""

    atomic_transactions = True

    def __init__(self, target: KVStore) -> None:
        self.target = target
        self.url = target.url
        self.seconds = 0.0

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - started

    def get(self, key: str) -> bytes | None:
        return self._timed(self.target.get, key)

    def put(self, key: str, value: bytes) -> None:
        self._timed(self.target.put, key, value)

    def delete(self, key: str) -> None:
        self._timed(self.target.delete, key)

    def list(self, prefix: str) -> list[str]:
        return self._timed(self.target.list, prefix)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        return self._timed(self.target.compare_and_set, key, expected, new)

    def transact(self, checks: Mapping[str, bytes | None], writes: Mapping[str, bytes | None]) -> bool:
        return self._timed(self.target.transact, checks, writes)

    def close(self) -> None:
        self.target.close()

    def move_to(self, store: KVStore) -> None:
        writes: dict[str, bytes | None] = {key: self.target.get(key) for key in self.target.list("")}
        if not store.transact({}, writes):
            raise RuntimeError(f"could not copy {len(writes)} keys into {store.url}")
        self.target, self.url = store, store.url


async def _no_sweep() -> int:
    return 0


def new_controller(url: str, namespace: str, clock: FakeClock,
                   store: KVStore | None = None) -> ServeController:
    """A controller on ``url`` (or on ``store``) with auto-ready fake replicas; recovers what
    the store holds."""
    ctrl = ServeController(url, namespace, run_loop=False, run_io=inline_runner, run_ray=inline_runner,
                           clock=clock, store=store,
                           wrapper_factory=lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True),
                           state_key=TEST_KEY)
    # the orphan sweep asks Ray for its named actors; there is no Ray here
    ctrl._sweep_orphans = _no_sweep  # type: ignore[method-assign]
    return ctrl


def reset_fakes() -> None:
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()


async def step_until_settled(ctrl: ServeController, clock: FakeClock, what: str) -> int:
    """Tick until no goal is pending; returns the ticks taken."""
    for ticks in range(1, MAX_BUILD_TICKS + 1):
        await ctrl.control_step(clock.advance())
        if not ctrl._goals.pending():
            return ticks
    raise RuntimeError(f"{what}: goals still pending after {MAX_BUILD_TICKS} ticks: "
                       f"{len(ctrl._goals.pending())}")


def p95(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


# -- 1 and 2: tick and recovery at scale ---------------------------------------------------
@dataclass
class ScaleResult:
    backends: int
    replicas: int
    build_s: float
    tick_ms: list[float]
    store_ms: list[float]
    visited: list[int]
    rpc_ms: list[float]
    all_tick_ms: list[float]
    all_visited: list[int]
    recovery_s: list[float]
    read_all_s: float
    records: int
    keys: int


def endpoint_records(n_backends: int) -> dict[str, dict[str, Any] | None]:
    """One endpoint per backend, as ``create_endpoint(f"ep{i}", f"b{i}", f"/ep{i}", ["GET"])``
    would store it."""
    return {f"endpoint/ep{i}": EndpointRecord(name=f"ep{i}", route=f"/ep{i}", methods=("GET",),
                                              traffic={f"b{i}": 1.0}).model_dump(mode="json")
            for i in range(n_backends)}


async def build_state(url: str, namespace: str, clock: FakeClock, n_backends: int, replicas: int
                      ) -> tuple[ServeController, ForwardingStore]:
    """Create the backends through the RPC, spread over one health-check period so that their
    health checks fall due evenly, and tick until every create goal completed; all of it on
    ``memory://``. Then add the endpoints and move everything into the SQLite file at ``url``."""
    store = ForwardingStore(open_store("memory://"))
    ctrl = new_controller(url, namespace, clock, store=store)
    phases = int(round(HEALTH_PERIOD_S / TICK_S))
    per_tick = math.ceil(n_backends / phases)
    created = 0
    while created < n_backends:
        for i in range(created, min(n_backends, created + per_tick)):
            await ctrl.create_backend(f"b{i}", b"code", f"init{i}".encode(), {"num_cpus": 0.1},
                                      {"num_replicas": replicas})
        created = min(n_backends, created + per_tick)
        await ctrl.control_step(clock.advance())
    await step_until_settled(ctrl, clock, f"building {n_backends} backends")
    records = RecordStore(store.target, namespace=f"serveplane/{namespace}", key=TEST_KEY)
    records.write(records.current_epoch(), endpoint_records(n_backends))
    store.move_to(open_store(url))
    return ctrl, store


async def measure_ticks(ctrl: ServeController, store: ForwardingStore, clock: FakeClock, replicas: int,
                        ticks: int, targets: dict[str, int], visit_all: bool
                        ) -> tuple[list[float], list[float], list[int], list[float]]:
    """``ticks`` ticks, each after one change on one backend.
    Returns (tick ms, of which store ms, backends visited, change RPC ms)."""
    tick_ms, store_ms, visited, rpc_ms = [], [], [], []
    for k in range(ticks):
        tag = f"b{k % ROTATION}"
        targets[tag] = replicas + 1 if targets.get(tag, replicas) == replicas else replicas
        started = time.perf_counter()
        await ctrl.update_backend_config(tag, {"num_replicas": targets[tag]})
        rpc_ms.append((time.perf_counter() - started) * 1000)
        if visit_all:
            for other in ctrl._backends.tags():
                ctrl._backends.mark_active(other)
        now = clock.advance()
        store_before = store.seconds
        started = time.perf_counter()
        report = await ctrl.control_step(now)
        tick_ms.append((time.perf_counter() - started) * 1000)
        store_ms.append((store.seconds - store_before) * 1000)
        visited.append(report.visited)
        if report.write_error:
            raise RuntimeError(f"tick could not write: {report.write_error}")
    return tick_ms, store_ms, visited, rpc_ms


def count_keys(url: str, namespace: str) -> int:
    store = open_store(url)
    try:
        return len(store.list(f"serveplane/{namespace}/"))
    finally:
        store.close()


async def successor_recovery(url: str, namespace: str, clock: FakeClock) -> list[float]:
    """``recovery_s`` of ``RECOVERIES`` successive successors on ``url``."""
    out = []
    for _ in range(RECOVERIES):
        gc.collect()  # the previous controller's garbage is not this one's cost
        out.append(new_controller(url, namespace, clock).recovery_s)
    return out


async def measure_scale(n_backends: int, replicas: int, ticks: int, db_dir: str) -> ScaleResult:
    reset_fakes()
    url = f"sqlite:///{db_dir}/scale-{n_backends}-{uuid.uuid4().hex[:6]}.db"
    namespace = "scale"
    clock = FakeClock()
    started = time.perf_counter()
    ctrl, store = await build_state(url, namespace, clock, n_backends, replicas)
    build_s = time.perf_counter() - started

    targets: dict[str, int] = {}
    gc.collect()
    await measure_ticks(ctrl, store, clock, replicas, WARMUP_TICKS, targets, visit_all=False)
    tick_ms, store_ms, visited, rpc_ms = await measure_ticks(ctrl, store, clock, replicas, ticks, targets,
                                                             visit_all=False)
    all_ms, _, all_visited, _ = await measure_ticks(ctrl, store, clock, replicas, max(4, ticks // 2),
                                                    targets, visit_all=True)
    await step_until_settled(ctrl, clock, "settling before recovery")
    del ctrl

    recovery = await successor_recovery(url, namespace, clock)
    plain = open_store(url)
    started = time.perf_counter()
    records = RecordStore(plain, namespace=f"serveplane/{namespace}", key=TEST_KEY).read_all()
    read_all_s = time.perf_counter() - started
    plain.close()
    return ScaleResult(n_backends, replicas, build_s, tick_ms, store_ms, visited, rpc_ms, all_ms,
                       all_visited, recovery, read_all_s, len(records), count_keys(url, namespace))


# -- 3: recovery vs history ------------------------------------------------------------------
HISTORY_BACKENDS = 10
HISTORY_REPLICAS = 2
CALL_KINDS = 5


@dataclass
class HistoryResult:
    calls: int
    keys: int
    goal_records: int
    recovery_s: list[float]


async def history_call(ctrl: ServeController, clock: FakeClock, i: int) -> None:
    """The ``i``-th historical call; a call that makes a goal is stepped to completion. The
    calls go round the backends; odd rounds undo what even rounds did."""
    j = (i // CALL_KINDS) % HISTORY_BACKENDS
    odd_round = (i // (CALL_KINDS * HISTORY_BACKENDS)) % 2 == 1
    tag, other = f"b{j}", f"b{(j + 1) % HISTORY_BACKENDS}"
    kind = i % CALL_KINDS
    if kind == 0:
        await ctrl.set_traffic(f"ep{j}", {tag: 1.0} if odd_round else {tag: 0.5, other: 0.5})
    elif kind == 1:
        await ctrl.update_backend_config(tag, {"user_config": {"call": i}})
    elif kind == 2:
        await ctrl.update_backend_config(tag, {"num_replicas": HISTORY_REPLICAS + (0 if odd_round else 1)})
    elif kind == 3:
        await ctrl.create_endpoint(f"tmp{i}", tag, f"/tmp{i}", ["GET"])
    else:
        await ctrl.delete_endpoint(f"tmp{i - 1}")
    if ctrl._goals.pending():
        await step_until_settled(ctrl, clock, f"historical call {i}")


async def measure_history(calls: int, db_dir: str) -> HistoryResult:
    """``calls`` calls on ``memory://``, then the store moved into SQLite, then recovery."""
    reset_fakes()
    url = f"sqlite:///{db_dir}/history-{calls}-{uuid.uuid4().hex[:6]}.db"
    namespace = "history"
    clock = FakeClock()
    store = ForwardingStore(open_store("memory://"))
    ctrl = new_controller(url, namespace, clock, store=store)
    for i in range(HISTORY_BACKENDS):
        await ctrl.create_backend(f"b{i}", b"code", f"init{i}".encode(), {"num_cpus": 0.1},
                                  {"num_replicas": HISTORY_REPLICAS})
        await ctrl.create_endpoint(f"ep{i}", f"b{i}", f"/ep{i}", ["GET"])
    await step_until_settled(ctrl, clock, "history setup")
    for i in range(calls):
        await history_call(ctrl, clock, i)
    store.move_to(open_store(url))
    goal_records = sum(1 for name in ctrl._store.read_all() if name.startswith("goal/"))
    del ctrl
    keys = count_keys(url, namespace)  # before any successor: each start adds one epoch claim
    return HistoryResult(calls, keys, goal_records, await successor_recovery(url, namespace, clock))


# -- 4: long-poll fan-out ------------------------------------------------------------------
async def fanout(listeners: int) -> float:
    host = LongPollHost(timeout_s=60)
    host.notify_changed("endpoint:ep", 0)
    published = host.get("endpoint:ep")
    if published is None:
        raise RuntimeError("the long-poll host lost the key it was just given")
    snapshot = published.snapshot_id
    tasks = [asyncio.ensure_future(host.listen_for_change({"endpoint:ep": snapshot}))
             for _ in range(listeners)]
    others = [asyncio.ensure_future(host.listen_for_change({f"endpoint:other{i}": None}))
              for i in range(listeners)]
    while host.num_listeners() < 2 * listeners:
        await asyncio.sleep(0)  # a yield, not a wait: lets every listener register
    t0 = time.perf_counter()
    host.notify_changed("endpoint:ep", 1)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    if any(t.done() for t in others):
        raise RuntimeError("a change to one key woke other keys' listeners")
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    return elapsed


# -- report ------------------------------------------------------------------------------------
TARGETS_MS = {10_000: (5.0, "≤"), 100_000: (50.0, "<")}  # the bounds, on the median tick


def print_scale(rows: list[ScaleResult], ticks: int) -> None:
    print(f"### Tick cost with one backend changing per tick ({ticks} ticks; fake clock +{TICK_S} s "
          f"a tick, health checks every {HEALTH_PERIOD_S:g} s)")
    print()
    print("Baseline: the same ticks with every backend marked active first (visit everything), "
          "same state, same run. Store I/O: SQLite with an fsync per write.")
    print()
    print("| replicas | backends | build s | tick median ms | tick p95 ms | of which store I/O ms "
          "(median) | backends visited per tick (median / max) | visit-everything tick median ms | "
          "speed-up | change RPC median ms | issue's bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r.backends * r.replicas
        median = statistics.median(r.tick_ms)
        all_median = statistics.median(r.all_tick_ms)
        bound = TARGETS_MS.get(n)
        if bound is None:
            verdict = "-"
        else:
            met = median <= bound[0] if bound[1] == "≤" else median < bound[0]
            verdict = f"{bound[1]}{bound[0]:g} ms: {'met' if met else 'MISSED'}"
        print(f"| {n:,} | {r.backends:,} | {r.build_s:.1f} | {median:.2f} | {p95(r.tick_ms):.2f} | "
              f"{statistics.median(r.store_ms):.2f} | "
              f"{statistics.median(r.visited):.0f} / {max(r.visited)} | {all_median:.2f} "
              f"({statistics.median(r.all_visited):,.0f} visited) | {all_median / median:.0f}x | "
              f"{statistics.median(r.rpc_ms):.2f} | {verdict} |")
    print()
    print(f"### Recovery time at the same sizes (successor controller on the same SQLite file, "
          f"median of {RECOVERIES})")
    print()
    print("Baseline: `RecordStore.read_all` of the same file alone.")
    print()
    print("| replicas | backends | records | keys in store | recovery s | read_all alone s | "
          "recovery per 1k replicas ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        n = r.backends * r.replicas
        rec = statistics.median(r.recovery_s)
        print(f"| {n:,} | {r.backends:,} | {r.records:,} | {r.keys:,} | {rec:.3f} | {r.read_all_s:.3f} | "
              f"{rec / n * 1e6:.1f} |")
    print()


def print_history(rows: list[HistoryResult]) -> None:
    print(f"### Recovery time vs history ({HISTORY_BACKENDS} backends x {HISTORY_REPLICAS} replicas, "
          f"{HISTORY_BACKENDS} endpoints; median of {RECOVERIES})")
    print()
    print(f"Baseline: the {rows[0].calls}-call row.")
    print()
    print("| historical calls | keys in store | of which goal records | recovery ms | vs baseline |")
    print("|---|---|---|---|---|")
    base = statistics.median(rows[0].recovery_s)
    for r in rows:
        rec = statistics.median(r.recovery_s)
        print(f"| {r.calls:,} | {r.keys:,} | {r.goal_records:,} | {rec * 1000:.2f} | {rec / base:.2f}x |")
    worst = max(rows, key=lambda r: statistics.median(r.recovery_s))
    ratio = statistics.median(worst.recovery_s) / base
    first = rows[0]
    print()
    if ratio > NOT_FLAT_RATIO:
        print(f"NOT FLAT: recovery after {worst.calls:,} calls took {ratio:.2f}x the {first.calls}-call "
              f"time; the store grew from {first.keys:,} to {worst.keys:,} keys, the goal records "
              f"from {first.goal_records:,} to {worst.goal_records:,}.")
    else:
        print(f"Flat: the slowest row is {ratio:.2f}x the {first.calls}-call row "
              f"(threshold {NOT_FLAT_RATIO}x).")
    if len(rows) > 2:
        last, before = rows[-1], rows[-2]
        print(f"From {before.calls:,} to {last.calls:,} calls: "
              f"{statistics.median(last.recovery_s) / statistics.median(before.recovery_s):.2f}x "
              f"(keys {before.keys:,} -> {last.keys:,}).")
    print()


async def run(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    history = [int(x) for x in args.history.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        scale = []
        for n_backends in sizes:
            scale.append(await measure_scale(n_backends, args.replicas, args.ticks, tmp))
        print_scale(scale, args.ticks)
        print_history([await measure_history(calls, tmp) for calls in history])
    reset_fakes()
    print(f"long-poll fan-out, 1000 listeners on one key (1000 others untouched): "
          f"{await fanout(1000) * 1000:.1f} ms from notify to all answered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="backends per row, comma-separated (each with --replicas replicas)")
    parser.add_argument("--replicas", type=int, default=10, help="replicas per backend")
    parser.add_argument("--ticks", type=int, default=20, help="measured ticks per size")
    parser.add_argument("--history", default="10,100,1000,10000",
                        help="historical calls before each recovery, comma-separated")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.history, args.ticks = "10,100", "10,100", 8
    started = time.perf_counter()
    asyncio.run(run(args))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
