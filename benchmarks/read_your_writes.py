"""What read-your-writes costs: ``set_traffic`` and ``create_endpoint``/``delete_endpoint``
with the wait for every proxy and this process's routers, against the same calls without it
(``client.read_your_writes = False``), interleaved in one run on one instance.

Also measured: how often a GET sent right after ``create_endpoint`` is refused without the
wait, and the long-poll round trip the added latency is compared with (a client that
waits on a key while the controller publishes it).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
import uuid

import httpx
import ray

import serveplane


def answer_a(request):
    return "a"


def answer_b(request):
    return "b"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = f"ryw-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, http_options={"port": port})
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        client.create_backend("a", answer_a, ray_actor_options={"num_cpus": 0.1})
        client.create_backend("b", answer_b, ray_actor_options={"num_cpus": 0.1})
        client.create_endpoint("ep", backend="a", route="/ep")
        handle = client.get_handle("ep")
        handle.remote(None).result(timeout=30)  # this process follows the endpoint too
        timings: dict[tuple[str, bool], list[float]] = {}
        refused = {True: 0, False: 0}
        for i in range(args.rounds):
            for wait in (False, True) if i % 2 else (True, False):
                client.read_your_writes = wait
                t0 = time.perf_counter()
                client.set_traffic("ep", {"b" if i % 2 else "a": 1.0})
                timings.setdefault(("set_traffic", wait), []).append(time.perf_counter() - t0)
                name = f"n{i}{int(wait)}"
                t0 = time.perf_counter()
                client.create_endpoint(name, backend="a", route=f"/{name}")
                timings.setdefault(("create_endpoint", wait), []).append(time.perf_counter() - t0)
                if http.get(f"/{name}").status_code != 200:
                    refused[wait] += 1
                t0 = time.perf_counter()
                client.delete_endpoint(name)
                timings.setdefault(("delete_endpoint", wait), []).append(time.perf_counter() - t0)
        client.read_your_writes = True
        print(f"{args.rounds} rounds, one proxy, calls interleaved with and without the wait\n")
        print("| call | without wait p50 ms | with wait p50 ms | added p50 ms | with wait p95 ms |")
        print("|---|---|---|---|---|")
        for call in ("set_traffic", "create_endpoint", "delete_endpoint"):
            off, on = timings[(call, False)], timings[(call, True)]
            print(f"| {call} | {statistics.median(off) * 1e3:.2f} | {statistics.median(on) * 1e3:.2f} "
                  f"| {(statistics.median(on) - statistics.median(off)) * 1e3:.2f} | {pct(on, 0.95) * 1e3:.2f} |")
        print(f"\nGET right after create_endpoint refused: {refused[False]}/{args.rounds} without the "
              f"wait, {refused[True]}/{args.rounds} with it")
        from serveplane.visibility import proxy_actors

        t0 = time.perf_counter()
        for _ in range(50):
            proxy_actors(ns)
        print(f"finding the proxies (list_named_actors): {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms")
    finally:
        http.close()
        client.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
