"""The router's own Python cost per request, on a fake transport (no Ray, no replica).

Each call is ``handle.remote(x)`` answered at once by the transport, then read: sync
callers with ``.result()``, async callers with ``await``. What remains is routing (pick,
slot, state moves, metadata, figures) and reading the answer: the part of a request's
latency that is the router's, apart from Ray and the replica.

    python benchmarks/router_cost.py                 # this checkout
    python benchmarks/router_cost.py --compare REV   # and REV's router, same run (a git worktree)

It prints microseconds per request (the median of several rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 7
CALLS = 20_000


def measure() -> dict[str, float]:
    import concurrent.futures

    from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, keys
    from serveplane.config import BackendConfig
    from serveplane.router import Handle, StaticSource
    from serveplane.router.router import EndpointRouter
    from serveplane.router.transport import RayTransport

    class Ref:
        __slots__ = ("future",)

        def __init__(self, value: object) -> None:
            self.future: concurrent.futures.Future = concurrent.futures.Future()
            self.future.set_result(value)

        def __await__(self):  # type: ignore[no-untyped-def]
            if False:
                yield
            return self.future.result()

    class Transport:
        classify = staticmethod(RayTransport.classify)

        @staticmethod
        def send(replica, meta, args, kwargs):  # type: ignore[no-untyped-def]
            return Ref(args[0])

        @staticmethod
        def get(ref, timeout):  # type: ignore[no-untyped-def]
            return ref.future.result()

        @staticmethod
        def on_completed(ref, callback):  # type: ignore[no-untyped-def]
            callback(ref.future.result())

        @staticmethod
        def cancel(ref):  # type: ignore[no-untyped-def]
            pass

    source = StaticSource()
    router = EndpointRouter("ep", source, transport=Transport())
    replicas = tuple(ReplicaInfo("b", f"r{i}", f"serveplane:b#r{i}", None, 100) for i in range(2))
    source.set(keys.replicas("b"), replicas)
    source.set(keys.backend_config("b"), BackendInfo("b", BackendConfig()))
    source.set(keys.endpoint("ep"), EndpointInfo(name="ep", route=None, methods=("GET",), traffic={"b": 1.0}))
    handle = Handle(router)

    def sync_round() -> float:
        start = time.perf_counter()
        for i in range(CALLS):
            handle.remote(i).result()
        return (time.perf_counter() - start) / CALLS * 1e6

    async def async_round() -> float:
        start = time.perf_counter()
        for i in range(CALLS):
            await handle.remote(i)
        return (time.perf_counter() - start) / CALLS * 1e6

    sync_round()  # warm-up
    sync_us = statistics.median(sync_round() for _ in range(ROUNDS))
    async_us = statistics.median(asyncio.run(async_round()) for _ in range(ROUNDS))
    return {"sync_us": sync_us, "async_us": async_us}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", help="a git revision whose router is measured in the same run")
    parser.add_argument("--json", action="store_true", help="print only this checkout's figures as JSON")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure()))
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = [("this checkout", here)]
    tmp = None
    if args.compare:
        tmp = tempfile.mkdtemp(prefix="serveplane-compare-")
        subprocess.run(["git", "-C", here, "worktree", "add", "--detach", tmp, args.compare], check=True,
                       capture_output=True)
        rows.append((args.compare, tmp))
    try:
        results = []
        for label, root in rows:
            out = subprocess.run([sys.executable, os.path.join(here, "benchmarks", "router_cost.py"), "--json"],
                                 env={**os.environ, "PYTHONPATH": root}, cwd=root, capture_output=True,
                                 text=True, check=True)
            results.append((label, json.loads(out.stdout)))
    finally:
        if tmp is not None:
            subprocess.run(["git", "-C", here, "worktree", "remove", "--force", tmp], capture_output=True)
    print("| router | sync caller µs/request | async caller µs/request |")
    print("|---|---|---|")
    for label, r in results:
        print(f"| {label} | {r['sync_us']:.1f} | {r['async_us']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
