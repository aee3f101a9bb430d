"""Handle latency and throughput: raw Ray actor vs serveplane vs Ray Serve, same no-op.

In one run and one Ray instance, for 1 and 2 replicas:
- p50/p99 latency of sequential calls from the driver;
- throughput with 64 calls in flight (asyncio on the driver).
The raw baseline is an async Ray actor with the same no-op method, called directly; Ray
Serve runs only when ``ray.serve`` imports (``make bench`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any, Callable

import ray

import serveplane


class NoOp:
    async def __call__(self, x: Any = None) -> Any:
        return x


@ray.remote
class RawActor:
    async def __call__(self, x: Any = None) -> Any:
        return x


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure_latency(call: Callable[[], Any], n: int) -> tuple[float, float]:
    for _ in range(50):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), pct(samples, 0.99)


def measure_throughput(acall: Callable[[], Any], n: int, in_flight: int) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                await acall()

        await asyncio.gather(*(one() for _ in range(200)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def run_raw(replicas: int, n_lat: int, n_tput: int) -> tuple[float, float, float]:
    actors = [RawActor.options(max_concurrency=1000).remote() for _ in range(replicas)]
    ray.get([a.__call__.remote() for a in actors])
    counter = iter(range(10**9))

    def call() -> Any:
        return ray.get(actors[next(counter) % replicas].__call__.remote(1))

    async def acall() -> Any:
        return await actors[next(counter) % replicas].__call__.remote(1)

    p50, p99 = measure_latency(call, n_lat)
    tput = measure_throughput(acall, n_tput, 64)
    for a in actors:
        ray.kill(a)
    return p50, p99, tput


def run_serveplane(replicas: int, n_lat: int, n_tput: int) -> tuple[float, float, float]:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns)
    client.create_backend("noop", NoOp, config={"num_replicas": replicas, "max_concurrent_queries": 1000},
                          ray_actor_options={"num_cpus": 0})
    client.create_endpoint("noop", backend="noop")
    handle = client.get_handle("noop")
    deadline = time.monotonic() + 30
    while sum(len(v) for v in handle.router.statistics()["replicas"].values()) < replicas:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p50, p99 = measure_latency(lambda: handle.remote(1).result(), n_lat)

    async def acall() -> Any:
        return await handle.remote(1)

    tput = measure_throughput(acall, n_tput, 64)
    client.shutdown()
    return p50, p99, tput


def run_ray_serve(replicas: int, n_lat: int, n_tput: int) -> tuple[float, float, float] | None:
    try:
        from ray import serve
    except ImportError:
        return None

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    class ServeNoOp:
        async def __call__(self, x: Any = None) -> Any:
            return x

    handle = serve.run(ServeNoOp.bind(), name=f"noop{replicas}", route_prefix=None)
    p50, p99 = measure_latency(lambda: handle.remote(1).result(), n_lat)

    async def acall() -> Any:
        return await handle.remote(1)

    tput = measure_throughput(acall, n_tput, 64)
    serve.delete(f"noop{replicas}")
    return p50, p99, tput


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--throughput-calls", type=int, default=4000)
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR")
    rows = []
    for replicas in (1, 2):
        raw = run_raw(replicas, args.latency_calls, args.throughput_calls)
        ours = run_serveplane(replicas, args.latency_calls, args.throughput_calls)
        serve_row = run_ray_serve(replicas, args.latency_calls, args.throughput_calls)
        rows.append((replicas, raw, ours, serve_row))
    print("| replicas | system | p50 ms | p99 ms | throughput req/s | p50 vs raw | throughput vs raw |")
    print("|---|---|---|---|---|---|---|")
    for replicas, raw, ours, serve_row in rows:
        for name, row in (("raw Ray actor", raw), ("serveplane handle", ours), ("Ray Serve handle", serve_row)):
            if row is None:
                print(f"| {replicas} | {name} | - | - | - | not installed | - |")
                continue
            print(f"| {replicas} | {name} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.0f} | "
                  f"{row[0] / raw[0]:.2f}x | {row[2] / raw[2]:.2f}x |")


if __name__ == "__main__":
    main()
