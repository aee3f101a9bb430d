"""Handle latency and throughput: raw Ray actor vs serveplane vs Ray Serve, same no-op.

In one run and one Ray instance, for 1 and 2 replicas:
- p50/p99 latency of sequential calls from the driver (sync: ``.result()`` / ``ray.get``);
- throughput with 64 calls in flight (asyncio on the driver: ``await``).

Rows:
- raw Ray actor: an async actor with the same no-op, called directly (the baseline);
- replica actor, direct: ``ReplicaActor.handle_request`` called directly, no router: what
  the replica wrapper costs by itself, so the router's own share is the difference with
  the next row;
- serveplane handle: ``Handle`` on a router fed by a ``StaticSource`` with the replicas
  (``--controller`` uses ``serveplane.start`` and ``client.get_handle`` instead);
- Ray Serve handle: only when ``ray.serve`` imports (``make bench`` installs it).

Latency is measured in interleaved chunks (raw, then each system, repeated) so that load
from elsewhere on a shared machine hits all rows alike; throughput is the median of
``--rounds`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any, Callable

import cloudpickle
import ray

from serveplane.config import BackendConfig
from serveplane.records import BackendInfo, EndpointInfo, ReplicaInfo, RequestMetadata, keys
from serveplane.replica.actor import ReplicaActor
from serveplane.router import Handle, StaticSource
from serveplane.router.transport import wire_metadata

IN_FLIGHT = 64
CHUNK = 50


class NoOp:
    async def __call__(self, x: Any = None) -> Any:
        return x


@ray.remote(num_cpus=0)
class RawActor:
    async def __call__(self, x: Any = None) -> Any:
        return x


class System:
    """A way to call the no-op: ``call()`` blocks, ``acall()`` is awaited."""

    name = ""

    def call(self) -> Any:
        raise NotImplementedError

    async def acall(self) -> Any:
        raise NotImplementedError

    def begin(self) -> None:
        """Before each of this system's measured chunks (the others' run in between)."""

    def end(self) -> None:
        pass

    def close(self) -> None:
        pass


class Raw(System):
    name = "raw Ray actor"

    def __init__(self, replicas: int) -> None:
        self.actors = [RawActor.options(max_concurrency=1000).remote() for _ in range(replicas)]
        ray.get([a.__call__.remote() for a in self.actors])
        self.n = 0

    def _next(self) -> Any:
        self.n += 1
        return self.actors[self.n % len(self.actors)]

    def call(self) -> Any:
        return ray.get(self._next().__call__.remote(1))

    async def acall(self) -> Any:
        return await self._next().__call__.remote(1)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def start_replicas(backend: str, replicas: int, config: BackendConfig,
                   env: dict[str, str] | None = None) -> list[ReplicaInfo]:
    infos = []
    extra = {"runtime_env": {"env_vars": env}} if env else {}
    for i in range(replicas):
        tag = f"{uuid.uuid4().hex[:6]}-{i}"
        actor = ray.remote(ReplicaActor).options(num_cpus=0, max_concurrency=1000, **extra).remote(
            backend, tag, cloudpickle.dumps(NoOp), cloudpickle.dumps(((), {})), config.model_dump(), "v1")
        infos.append(ReplicaInfo(backend, tag, f"serveplane:{backend}#{tag}", actor,
                                 config.max_concurrent_queries))
    ray.get([i.actor_handle.ready.remote() for i in infos])
    return infos


class ReplicaDirect(System):
    name = "replica actor, direct (no router)"

    def __init__(self, replicas: int) -> None:
        self.replicas = start_replicas("direct", replicas, BackendConfig(max_concurrent_queries=1000))
        self.meta = wire_metadata(RequestMetadata("bench", "noop"))  # as the router sends it
        self.n = 0

    def _ref(self) -> Any:
        self.n += 1
        return self.replicas[self.n % len(self.replicas)].actor_handle.handle_request.remote(self.meta, 1)

    def call(self) -> Any:
        return ray.get(self._ref())

    async def acall(self) -> Any:
        return await self._ref()

    def close(self) -> None:
        for r in self.replicas:
            ray.kill(r.actor_handle)


class Serveplane(System):
    name = "serveplane handle"

    def __init__(self, replicas: int, use_controller: bool, env: dict[str, str] | None = None) -> None:
        self.client = None
        self.replicas: list[ReplicaInfo] = []
        if use_controller:
            import serveplane

            ns = f"bench-{uuid.uuid4().hex[:6]}"
            self.client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns)
            options: dict[str, Any] = {"num_cpus": 0}
            if env:
                options["runtime_env"] = {"env_vars": env}
            self.client.create_backend("noop", NoOp, config={"num_replicas": replicas,
                                                             "max_concurrent_queries": 1000},
                                       ray_actor_options=options)
            self.client.create_endpoint("noop", backend="noop")
            self.handle = self.client.get_handle("noop")
            deadline = time.monotonic() + 60
            while sum(len(v) for v in self.handle.router.statistics()["replicas"].values()) < replicas:
                if time.monotonic() > deadline:
                    raise TimeoutError("the controller did not publish the replicas within 60s")
                time.sleep(0.05)
        else:
            config = BackendConfig(max_concurrent_queries=1000)
            self.replicas = start_replicas("noop", replicas, config, env)
            source = StaticSource()
            source.set(keys.replicas("noop"), tuple(self.replicas))
            source.set(keys.backend_config("noop"), BackendInfo("noop", config))
            source.set(keys.endpoint("noop"), EndpointInfo("noop", None, ("GET",), {"noop": 1.0}))
            self.handle = Handle("noop", source=source)

    def call(self) -> Any:
        return self.handle.remote(1).result()

    async def acall(self) -> Any:
        return await self.handle.remote(1)

    def close(self) -> None:
        if self.client is not None:
            self.client.shutdown()
        for r in self.replicas:
            ray.kill(r.actor_handle)


class _NoOutcomes:
    """Stands in for the router's per-request outcome figures (rollout guards, latency
    histograms), to measure what recording them costs."""

    def answered(self, *args: Any) -> None:
        pass

    def replica_failed(self, *args: Any) -> None:
        pass

    def as_dict(self) -> dict[str, Any]:
        return {}


class ServeplaneNoOutcomes(Serveplane):
    name = "serveplane handle, outcome figures off"

    def __init__(self, replicas: int, use_controller: bool) -> None:
        super().__init__(replicas, use_controller)
        self.handle.router.stats.outcomes = _NoOutcomes()


TRACING_ENV = {"SERVEPLANE_OTEL_SETUP": "bench_otel:setup",
               "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parent)}


class ServeplaneTraced(Serveplane):
    """Tracing on: an SDK provider in the driver and in the replicas (``bench_otel.py``);
    every call makes a route, a replica and a user-code span. The plain serveplane row is
    tracing off: no provider in its replicas, ``tracing.ENABLED`` False in the driver."""

    name = "serveplane handle, tracing on"

    def __init__(self, replicas: int, use_controller: bool) -> None:
        super().__init__(replicas, use_controller, TRACING_ENV)

    def begin(self) -> None:
        from serveplane import tracing

        tracing.ENABLED = tracing.refresh()
        assert tracing.ENABLED, "no tracer provider in the driver"

    def end(self) -> None:
        from serveplane import tracing

        tracing.ENABLED = False


class RayServe(System):
    name = "Ray Serve handle"

    def __init__(self, replicas: int) -> None:
        from ray import serve

        serve.start(proxy_location="Disabled")

        @serve.deployment(num_replicas=replicas, max_ongoing_requests=1000,
                          ray_actor_options={"num_cpus": 0})
        class ServeNoOp:
            async def __call__(self, x: Any = None) -> Any:
                return x

        self.app = f"noop{replicas}"
        self.handle = serve.run(ServeNoOp.bind(), name=self.app, route_prefix=None)

    def call(self) -> Any:
        return self.handle.remote(1).result()

    async def acall(self) -> Any:
        return await self.handle.remote(1)

    def close(self) -> None:
        from ray import serve

        serve.delete(self.app)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latencies(systems: list[System], n: int) -> dict[str, tuple[float, float]]:
    samples: dict[str, list[float]] = {s.name: [] for s in systems}
    for system in systems:
        system.begin()
        for _ in range(50):
            system.call()
        system.end()
    for _ in range(max(1, n // CHUNK)):
        for system in systems:
            call = system.call
            out = samples[system.name]
            system.begin()
            for _ in range(CHUNK):
                t0 = time.perf_counter()
                call()
                out.append((time.perf_counter() - t0) * 1000)
            system.end()
    return {name: (statistics.median(s), pct(s, 0.99)) for name, s in samples.items()}


def throughput(acall: Callable[[], Any], n: int) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            async with sem:
                await acall()

        await asyncio.gather(*(one() for _ in range(200)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def throughputs(systems: list[System], n: int, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {s.name: [] for s in systems}
    for _ in range(rounds):
        for system in systems:
            system.begin()
            results[system.name].append(throughput(system.acall, n))
            system.end()
    return {name: statistics.median(r) for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--throughput-calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--controller", action="store_true",
                        help="serveplane via serveplane.start and client.get_handle")
    parser.add_argument("--outcomes-cost", action="store_true",
                        help="add a row with the router's outcome figures switched off")
    parser.add_argument("--tracing-cost", action="store_true",
                        help="add a row with OpenTelemetry tracing on (needs opentelemetry-sdk)")
    args = parser.parse_args()
    if args.tracing_cost:
        import sys

        sys.path.insert(0, TRACING_ENV["PYTHONPATH"])
        import bench_otel

        from serveplane import tracing

        bench_otel.setup()
        tracing.ENABLED = False  # on only while the traced row runs (ServeplaneTraced.begin)
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    try:
        from ray import serve  # noqa: F401

        have_serve = True
    except ImportError:
        have_serve = False
        print("note: ray.serve is not importable here; the Ray Serve rows are skipped "
              "(pip install 'ray[serve]' to compare)")
    rows = []
    for replicas in (1, 2):
        systems: list[System] = [Raw(replicas), ReplicaDirect(replicas),
                                 Serveplane(replicas, args.controller)]
        if args.outcomes_cost:
            systems.append(ServeplaneNoOutcomes(replicas, args.controller))
        if args.tracing_cost:
            systems.append(ServeplaneTraced(replicas, args.controller))
        if have_serve:
            systems.append(RayServe(replicas))
        lat = latencies(systems, args.latency_calls)
        tput = throughputs(systems, args.throughput_calls, args.rounds)
        for system in systems:
            system.close()
        rows.append((replicas, [(s.name, lat[s.name], tput[s.name]) for s in systems]))
    print(f"\nsequential: {args.latency_calls} calls per row; throughput: {args.throughput_calls} calls "
          f"at {IN_FLIGHT} in flight, median of {args.rounds} rounds\n")
    print("| replicas | system | p50 ms | p99 ms | throughput req/s | p50 vs raw | throughput vs raw |")
    print("|---|---|---|---|---|---|---|")
    for replicas, measured in rows:
        raw_lat, raw_tput = measured[0][1], measured[0][2]
        for name, (p50, p99), tp in measured:
            print(f"| {replicas} | {name} | {p50:.3f} | {p99:.3f} | {tp:.0f} | {p50 / raw_lat[0]:.2f}x | "
                  f"{tp / raw_tput:.2f}x |")
        if not have_serve:
            print(f"| {replicas} | Ray Serve handle | - | - | - | not installed | - |")


if __name__ == "__main__":
    main()
