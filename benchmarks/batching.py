"""Batching throughput: none vs replica-side (@serveplane.batch) vs router-side, one run.

Two models: a no-op, and one whose cost is mostly per call (a fixed overhead of 2 ms plus
0.05 ms per item, as a model's kernel launch + small per-row work). 64 calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid

import ray

import serveplane

FIXED_S = 0.002
PER_ITEM_S = 0.00005


class NoOp:
    async def __call__(self, x):
        return x


class NoOpBatched:
    @serveplane.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def __call__(self, items):
        return items


class _Device:
    """One forward pass at a time, as on a GPU stream or a model holding the GIL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def forward(self, n_items: int) -> None:
        with self.lock:
            time.sleep(FIXED_S + PER_ITEM_S * n_items)


class PerCall:
    def __init__(self) -> None:
        self.device = _Device()

    def __call__(self, x):
        self.device.forward(1)
        return x


class PerCallBatched:
    def __init__(self) -> None:
        self.device = _Device()

    @serveplane.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def __call__(self, items):
        await asyncio.get_running_loop().run_in_executor(None, self.device.forward, len(items))
        return items


class PerCallAcceptBatch:
    def __init__(self) -> None:
        self.device = _Device()

    @serveplane.accept_batch
    def __call__(self, items):
        self.device.forward(len(items))
        return items


def throughput(handle, n: int, in_flight: int = 64) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                assert await handle.remote(i) == i

        await asyncio.gather(*(one(i) for i in range(100)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR")
    ns = f"batch-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns)
    cases = [
        ("no-op", "none", NoOp, {}),
        ("no-op", "replica-side", NoOpBatched, {}),
        ("no-op", "router-side", NoOp, {"batch_size": 16, "batch_timeout_s": 0.002}),
        ("per-call model", "none", PerCall, {}),
        ("per-call model", "replica-side", PerCallBatched, {}),
        ("per-call model", "router-side", PerCallAcceptBatch, {"batch_size": 16, "batch_timeout_s": 0.002}),
    ]
    results = {}
    for i, (model, mode, cls, endpoint_opts) in enumerate(cases):
        tag = f"b{i}"
        client.create_backend(tag, cls, config={"max_concurrent_queries": 1000}, ray_actor_options={"num_cpus": 0})
        client.create_endpoint(tag, backend=tag, **endpoint_opts)
        handle = client.get_handle(tag)
        while not handle.router.statistics()["replicas"].get(tag):
            time.sleep(0.05)
        n = args.calls if model == "no-op" else args.calls // 3
        results[(model, mode)] = throughput(handle, n)
        client.delete_endpoint(tag)
        client.delete_backend(tag)
    client.shutdown()
    print("| model | batching | throughput req/s | vs no batching |")
    print("|---|---|---|---|")
    for (model, mode), tput in results.items():
        print(f"| {model} | {mode} | {tput:.0f} | {tput / results[(model, 'none')]:.2f}x |")


if __name__ == "__main__":
    main()
