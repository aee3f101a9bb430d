"""HTTP proxy latency and throughput: serveplane's proxy vs Ray Serve's, same no-op.

A bounded load generator on loopback (httpx, asyncio) sends N requests at C in flight to
each proxy in turn, in one run. Baseline: Ray Serve's HTTP proxy with the same
function and replica count (skipped with a note when ray.serve is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
import uuid

import httpx
import ray

import serveplane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequential_p50(url: str, n: int = 300) -> float:
    with httpx.Client() as client:
        for _ in range(30):
            client.get(url).raise_for_status()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.get(url).raise_for_status()
            samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


async def load(url: str, total: int, in_flight: int) -> tuple[float, float, float, float]:
    seq = sequential_p50(url)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=in_flight)) as client:
        for _ in range(50):
            (await client.get(url)).raise_for_status()
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                r = await client.get(url)
                r.raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return seq, statistics.median(latencies), latencies[int(0.99 * len(latencies))], total / elapsed


def noop(request):
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR")
    rows = []
    port = free_port()
    ns = f"http-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, http_options={"port": port})
    client.create_backend("noop", noop, ray_actor_options={"num_cpus": 0})
    client.create_endpoint("noop", backend="noop", route="/noop")
    deadline = time.time() + 30
    while httpx.get(f"http://127.0.0.1:{port}/noop").status_code != 200:
        assert time.time() < deadline
        time.sleep(0.1)
    rows.append(("serveplane proxy", asyncio.run(load(f"http://127.0.0.1:{port}/noop", args.requests, args.in_flight))))
    client.shutdown()
    try:
        from ray import serve
    except ImportError:
        serve = None
    if serve is not None:
        serve_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        def serve_noop(request):
            return "ok"

        serve.run(serve_noop.bind(), route_prefix="/noop")
        rows.append(("Ray Serve proxy", asyncio.run(load(f"http://127.0.0.1:{serve_port}/noop", args.requests,
                                                         args.in_flight))))
        serve.shutdown()
    base = rows[-1][1]
    print(f"| proxy | sequential p50 ms | p50 ms at {args.in_flight} in flight | p99 ms | req/s | "
          f"throughput vs Ray Serve |")
    print("|---|---|---|---|---|---|")
    for name, (seq, p50, p99, tput) in rows:
        print(f"| {name} | {seq:.2f} | {p50:.2f} | {p99:.2f} | {tput:.0f} | {tput / base[3]:.2f}x |")
    if serve is None:
        print("note: ray.serve is not installed; run `make bench` to install the bench extra")


if __name__ == "__main__":
    main()
