"""Long-poll fan-out latency on a real Ray instance: notify -> every subscriber's callback.

Setup: one async host actor holding a ``LongPollHost``; ``--clients`` independent
``LongPollClient`` instances, each subscribed to the key ``bench`` (and to one private
key, so every listen call carries two keys). Each client stands in for one process.

``--mode actors`` (default) spreads the clients over ``--workers`` Ray worker actors
(separate processes, ``clients / workers`` client threads each); ``--mode inprocess`` runs
all clients as threads of this driver process.

Each round the host stamps ``time.time()`` into the payload immediately before
``notify_changed``; each callback records ``time.time() - stamp``. Everything runs on one
machine, so the clocks agree. A round is published once all ``--clients`` listen calls wait
on the host, and ends when every client has seen it (rounds do not overlap); the first
delivery (the subscription itself) is not counted.

``--baseline`` also times the floor on the same machine: a bare async Ray actor where
``--clients`` calls from this driver wait on one ``asyncio.Event`` and return an answer of
the same shape; the latency is from ``event.set()`` to each result arriving here (in Ray's
callback thread). No long-poll code is involved: it is the floor Ray sets for this fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import threading
import time
import uuid
from typing import Any, Callable

import ray

from serveplane.long_poll import LongPollClient, LongPollHost, UpdatedObject

KEY = "bench"
ROUND_TIMEOUT_S = 30.0


@ray.remote(num_cpus=0)
class BenchHost:
    def __init__(self) -> None:
        self._host = LongPollHost(timeout_s=30.0)

    async def publish(self, round_no: int) -> None:
        self._host.notify_changed(KEY, {"round": round_no, "ts": time.time()})

    async def publish_private(self, key: str) -> None:
        self._host.notify_changed(key, "private")

    async def listen_for_change(self, keys_to_snapshot_ids: dict[str, str | None]) -> Any:
        return await self._host.listen_for_change(keys_to_snapshot_ids)

    async def num_listeners(self) -> int:
        return self._host.num_listeners()


@ray.remote(num_cpus=0)
class RawHost:
    """Baseline: callers wait on one event; ``fire`` stamps the time and wakes them all."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._stamp = 0.0
        self._waiting = 0

    async def wait(self) -> dict[str, UpdatedObject]:
        event = self._event
        self._waiting += 1
        try:
            await event.wait()
        finally:
            self._waiting -= 1
        # The same shape of answer as LongPollHost's, so only the long-poll logic differs.
        return {KEY: UpdatedObject("raw", {"round": 0, "ts": self._stamp})}

    async def waiting(self) -> int:
        return self._waiting

    async def fire(self) -> None:
        self._stamp = time.time()
        self._event.set()
        self._event = asyncio.Event()


def run_baseline(clients: int, rounds: int) -> list[float]:
    raw = RawHost.options(max_concurrency=max(1000, 2 * clients)).remote()
    latencies: list[float] = []
    lock = threading.Lock()

    def on_done(fut) -> None:
        arrived = time.time()
        with lock:
            latencies.append((arrived - fut.result()[KEY].value["ts"]) * 1000)

    try:
        for _ in range(rounds):
            futures = [raw.wait.remote().future() for _ in range(clients)]
            wait_for(lambda: ray.get(raw.waiting.remote()) >= clients,
                     f"all {clients} baseline calls to reach the host")
            for fut in futures:
                fut.add_done_callback(on_done)
            ray.get(raw.fire.remote())
            concurrent.futures.wait(futures, timeout=ROUND_TIMEOUT_S)
    finally:
        ray.kill(raw)
    with lock:
        return sorted(latencies)


class ClientGroup:
    """``n`` independent clients in this process, recording notify -> callback latency."""

    def __init__(self, host_name: str, namespace: str, n: int, group: int) -> None:
        self._lock = threading.Lock()
        self._latencies_ms: list[float] = []
        self._last_round = [-1] * n
        self._clients = [LongPollClient(host_name, namespace) for _ in range(n)]
        for i, client in enumerate(self._clients):
            client.subscribe(KEY, self._recorder(i))
            client.subscribe(f"private-{group}-{i}", lambda value: None)

    def _recorder(self, index: int):
        def record(value: dict[str, Any]) -> None:
            latency_ms = (time.time() - value["ts"]) * 1000
            with self._lock:
                self._last_round[index] = value["round"]
                if value["round"] > 0:
                    self._latencies_ms.append(latency_ms)
        return record

    def min_round_seen(self) -> int:
        with self._lock:
            return min(self._last_round)

    def latencies_ms(self) -> list[float]:
        with self._lock:
            return list(self._latencies_ms)

    def stop(self) -> None:
        for client in self._clients:
            client.stop()


@ray.remote(num_cpus=0)
class ClientGroupActor:
    def __init__(self, host_name: str, namespace: str, n: int, group: int) -> None:
        self._group = ClientGroup(host_name, namespace, n, group)

    def min_round_seen(self) -> int:
        return self._group.min_round_seen()

    def latencies_ms(self) -> list[float]:
        return self._group.latencies_ms()

    def stop(self) -> None:
        self._group.stop()


def summary(sorted_ms: list[float]) -> str:
    return (f"p50={percentile(sorted_ms, 0.50):.1f} p99={percentile(sorted_ms, 0.99):.1f} "
            f"max={sorted_ms[-1]:.1f} mean={statistics.fmean(sorted_ms):.1f}")


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mode", choices=["actors", "inprocess"], default="actors")
    parser.add_argument("--workers", type=int, default=4, help="worker actors in --mode actors")
    parser.add_argument("--baseline", action="store_true", help="also time a bare async actor fan-out")
    args = parser.parse_args()
    if args.clients < 1 or args.rounds < 1:
        parser.error("--clients and --rounds must be at least 1")

    namespace = f"bench-lp-{uuid.uuid4().hex[:6]}"
    ray.init(include_dashboard=False, logging_level="ERROR", namespace=namespace)
    host_name = "bench-long-poll-host"
    host = BenchHost.options(name=host_name, max_concurrency=max(1000, 2 * args.clients)).remote()
    groups: list[Any] = []
    local: ClientGroup | None = None
    t_start = time.perf_counter()
    try:
        ray.get(host.publish.remote(0))
        if args.mode == "actors":
            workers = max(1, min(args.workers, args.clients))
            sizes = [args.clients // workers + (1 if i < args.clients % workers else 0)
                     for i in range(workers)]
            groups = [ClientGroupActor.remote(host_name, namespace, n, i) for i, n in enumerate(sizes)]

            def min_round() -> int:
                return min(ray.get([g.min_round_seen.remote() for g in groups]))
        else:
            local = ClientGroup(host_name, namespace, args.clients, 0)
            min_round = local.min_round_seen
        wait_for_round(min_round, 0)
        setup_s = time.perf_counter() - t_start

        t_rounds = time.perf_counter()
        for round_no in range(1, args.rounds + 1):
            # Publish only once every client's next listen call is waiting on the host, as it
            # is in steady state (updates are rare); otherwise a round measures the catch-up
            # of calls still in transit rather than the fan-out.
            wait_for(lambda: ray.get(host.num_listeners.remote()) >= args.clients,
                     f"all {args.clients} listen calls to reach the host before round {round_no}")
            ray.get(host.publish.remote(round_no))
            wait_for_round(min_round, round_no)
        rounds_s = time.perf_counter() - t_rounds

        if local is not None:
            latencies = local.latencies_ms()
        else:
            latencies = [x for lat in ray.get([g.latencies_ms.remote() for g in groups]) for x in lat]
        latencies.sort()
        expected = args.clients * args.rounds
        print(f"mode={args.mode} clients={args.clients} rounds={args.rounds} "
              f"(setup {setup_s:.1f}s, rounds {rounds_s:.1f}s)")
        print(f"deliveries: {len(latencies)} (expected {expected})")
        print(f"notify->callback latency ms: {summary(latencies)}")
        if args.baseline:
            print(f"baseline (bare async actor, {args.clients} waiting calls) set->result ms: "
                  f"{summary(run_baseline(args.clients, args.rounds))}")
    finally:
        if local is not None:
            local.stop()
        ray.get([g.stop.remote() for g in groups], timeout=30)
        for actor in [*groups, host]:
            ray.kill(actor)
        ray.shutdown()


def wait_for_round(min_round: Callable[[], int], round_no: int) -> None:
    wait_for(lambda: min_round() >= round_no, f"round {round_no} to reach every client")


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {ROUND_TIMEOUT_S:.0f}s waiting for {what}")
        time.sleep(0.005)


if __name__ == "__main__":
    main()
