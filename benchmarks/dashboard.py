"""What the dashboard costs: events per second per viewer, and the proxy's and the
controller's CPU for N viewers of ``/-/dashboard/events``, under the same handle load.

One Ray instance, one backend (2 replicas of a no-op), a steady load from the driver's
handle (so the routers' figures, and with them the time series, change all the time).
For each N, N server-sent-event streams are held open for ``--window`` seconds; the
proxy's and controller's CPU seconds come from ``/proc/<pid>/stat`` (one machine).

    python benchmarks/dashboard.py --viewers 0,1,10,50 --window 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from typing import Any

import httpx
import ray


class NoOp:
    def __call__(self, x: Any = None) -> Any:
        return x


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hold_viewers(url: str, n: int, seconds: float) -> tuple[list[int], dict[str, Any]]:
    counts = [0] * n

    async def viewer(i: int, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", url) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: snapshot"):
                    counts[i] += 1

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=n + 5)) as client:
        tasks = [asyncio.create_task(viewer(i, client)) for i in range(n)]
        await asyncio.sleep(seconds)
        stats = (await client.get(url.replace("/events", "/stats"))).json()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts, stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", default="0,1,10,50")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0, help="handle calls per second")
    args = parser.parse_args()

    import serveplane
    from serveplane.records import CONTROLLER_NAME

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ns = f"dashbench-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns,
                              http_options={"host": "127.0.0.1", "port": 8131})
    client.create_backend("noop", NoOp, config={"num_replicas": 2}, ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("noop", backend="noop")
    handle = client.get_handle("noop")
    proxy_pid = ray.get(client._proxies[0].statistics.remote())["pid"]
    controller = ray.get_actor(CONTROLLER_NAME, namespace=ns)
    controller_pid = ray.get(controller.__ray_call__.remote(lambda self: os.getpid()))

    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            handle.remote(1).result()
            time.sleep(1.0 / args.rate)

    threading.Thread(target=load, daemon=True).start()
    time.sleep(3)
    url = "http://127.0.0.1:8131/-/dashboard/events"
    print("| viewers | events/s per viewer | proxy CPU % | controller CPU % | snapshot bytes | skipped |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in args.viewers.split(",")]:
        proxy0, ctrl0, t0 = cpu_seconds(proxy_pid), cpu_seconds(controller_pid), time.monotonic()
        counts, stats = asyncio.run(hold_viewers(url, n, args.window))
        elapsed = time.monotonic() - t0
        proxy_cpu = 100 * (cpu_seconds(proxy_pid) - proxy0) / elapsed
        ctrl_cpu = 100 * (cpu_seconds(controller_pid) - ctrl0) / elapsed
        per_viewer = sum(counts) / n / elapsed if n else 0.0
        print(f"| {n} | {per_viewer:.2f} | {proxy_cpu:.1f} | {ctrl_cpu:.1f} | {stats['snapshot_bytes']} | "
              f"{stats['events_skipped']} |", flush=True)
    stop.set()
    client.shutdown()


if __name__ == "__main__":
    main()
