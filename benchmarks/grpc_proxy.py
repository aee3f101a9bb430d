"""gRPC proxy latency and throughput: serveplane's proxy vs Ray Serve's, same no-op, same run.

A grpcio asyncio client on loopback sends N unary requests at C in flight (one channel) to
each proxy in turn, after a warm-up, and reports p50/p99 latency and requests/s. Both proxies
serve the gRPC example's service (``examples/grpc/predictor.proto``) and answer ``Predict``
with an empty reply from one replica (Ray Serve's with ``max_ongoing_requests=100``, as
serveplane's ``max_concurrent_queries``, and no access log). Baseline: Ray Serve's gRPC proxy
(``serve.start(grpc_options=gRPCOptions(...))``; skipped with a note when ray.serve is not
installed: ``make bench`` installs it). Run from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import ray  # noqa: E402

import serveplane  # noqa: E402
from examples.grpc import predictor_pb2, predictor_pb2_grpc  # noqa: E402

SERVICER = "examples.grpc.predictor_pb2_grpc.add_PredictorServicer_to_server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoOp:
    def Predict(self, request):
        return predictor_pb2.PredictReply()


async def load(address: str, total: int, in_flight: int, metadata: tuple = ()) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        request = predictor_pb2.PredictRequest(text="x")
        for _ in range(100):
            await stub.Predict(request, timeout=30, metadata=metadata)
        sequential = []
        for _ in range(300):
            t0 = time.perf_counter()
            await stub.Predict(request, timeout=30, metadata=metadata)
            sequential.append((time.perf_counter() - t0) * 1000)
        latencies: list[float] = []
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                await stub.Predict(request, timeout=30, metadata=metadata)
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"seq_p50": statistics.median(sequential), "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * len(latencies))], "rps": total / elapsed}


def serveplane_run(total: int, in_flight: int) -> dict[str, float]:
    port = free_port()
    ns = f"grpc-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns,
                              grpc_options={"port": port, "servicer_functions": [SERVICER]})
    try:
        client.create_backend("noop", NoOp, ray_actor_options={"num_cpus": 0})
        client.create_endpoint("noop", backend="noop")
        return asyncio.run(load(f"127.0.0.1:{port}", total, in_flight))
    finally:
        client.shutdown()


def ray_serve_run(total: int, in_flight: int) -> dict[str, float] | None:
    try:
        from ray import serve
        from ray.serve.config import gRPCOptions
    except ImportError:
        return None
    port = free_port()
    quiet = {"log_level": "WARNING", "enable_access_log": False}  # no log line per request
    serve.start(grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER]),
                http_options={"host": "127.0.0.1", "port": free_port()}, logging_config=quiet)

    # the same concurrency limit as serveplane's default max_concurrent_queries (Serve's is 5)
    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100, logging_config=quiet)
    class ServeNoOp:
        def Predict(self, request):
            return predictor_pb2.PredictReply()

    try:
        serve.run(ServeNoOp.bind(), name="noop", route_prefix="/noop")
        return asyncio.run(load(f"127.0.0.1:{port}", total, in_flight, (("application", "noop"),)))
    finally:
        serve.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    rows = [("serveplane gRPC proxy", serveplane_run(args.requests, args.in_flight))]
    baseline = ray_serve_run(args.requests, args.in_flight)
    if baseline is not None:
        rows.append(("Ray Serve gRPC proxy", baseline))
    base = rows[-1][1]
    print(f"| proxy | sequential p50 ms | p50 ms at {args.in_flight} in flight | p99 ms | req/s | "
          f"throughput vs Ray Serve | p50 vs Ray Serve |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['seq_p50']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
              f"{r['rps'] / base['rps']:.2f}x | {r['p50'] / base['p50']:.2f}x |")
    if baseline is None:
        print("note: ray.serve is not installed; run `make bench` to install the bench extra")


if __name__ == "__main__":
    main()
