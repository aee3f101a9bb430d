"""Streaming: time to first chunk and chunks/s, same generator, same run.

Rows (one Ray instance, one replica each, the same async generator of small str chunks):
- raw Ray streaming generator: an async actor method called with
  ``num_returns="streaming"`` (the baseline for the handle rows);
- serveplane handle: ``handle.options(stream=True).remote(n)``;
- serveplane HTTP: the proxy, read with httpx's streaming client (chunked transfer);
- Ray Serve handle and Ray Serve HTTP: ``ray.serve`` with the same generator (only when
  it imports: ``make bench`` installs the bench extra).

Time to first chunk: a stream of one chunk, started and read to its first chunk, p50/p99
over ``--first`` streams, interleaved across rows. Chunks/s: one stream of ``--chunks``
chunks read to its end, median of ``--rounds`` interleaved rounds. Memory under a slow
reader: how far a producer runs ahead of a reader that stops reading (bounded by Ray's
generator back-pressure, ``STREAM_BUFFER``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
import uuid
from typing import Any, AsyncIterator

import ray


class Gen:
    async def __call__(self, n: int = 1) -> AsyncIterator[str]:
        for i in range(n):
            yield f"chunk {i}\n"

    async def http(self, request: Any) -> AsyncIterator[str]:
        n = int(request.query_params.get("n", "1"))
        for i in range(n):
            yield f"chunk {i}\n"


@ray.remote(num_cpus=0)
class RawGen:
    async def stream(self, n: int = 1) -> AsyncIterator[str]:
        for i in range(n):
            yield f"chunk {i}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Row:
    name = ""

    async def first_chunk(self) -> float:
        """Seconds from the call to its first chunk."""
        raise NotImplementedError

    async def drain(self, n: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Raw(Row):
    name = "raw Ray streaming generator"

    def __init__(self) -> None:
        self.actor = RawGen.options(max_concurrency=1000).remote()

    def _call(self, n: int) -> Any:
        return self.actor.stream.options(num_returns="streaming").remote(n)

    async def first_chunk(self) -> float:
        started = time.perf_counter()
        gen = self._call(1)
        await (await gen.__anext__())
        took = time.perf_counter() - started
        async for ref in gen:
            await ref
        return took

    async def drain(self, n: int) -> int:
        count = 0
        async for ref in self._call(n):
            await ref
            count += 1
        return count

    def close(self) -> None:
        ray.kill(self.actor)


class ServeplaneHandle(Row):
    name = "serveplane handle"

    def __init__(self, client: Any) -> None:
        self.handle = client.get_handle("gen").options(stream=True)

    async def first_chunk(self) -> float:
        started = time.perf_counter()
        stream = self.handle.remote(1)
        await stream.__anext__()
        took = time.perf_counter() - started
        async for _ in stream:
            pass
        return took

    async def drain(self, n: int) -> int:
        count = 0
        async for _ in self.handle.remote(n):
            count += 1
        return count


class HTTPRow(Row):
    def __init__(self, name: str, url: str) -> None:
        import httpx

        self.name = name
        self.url = url
        self.http = httpx.AsyncClient(timeout=60)

    async def first_chunk(self) -> float:
        started = time.perf_counter()
        async with self.http.stream("GET", self.url, params={"n": "1"}) as r:
            chunks = r.aiter_raw()
            await chunks.__anext__()
            took = time.perf_counter() - started
            async for _ in chunks:
                pass
        return took

    async def drain(self, n: int) -> int:
        count = 0
        async with self.http.stream("GET", self.url, params={"n": str(n)}) as r:
            async for text in r.aiter_text():
                count += text.count("\n")
        return count


class RayServeHandle(Row):
    name = "Ray Serve handle"

    def __init__(self, handle: Any) -> None:
        self.handle = handle.options(stream=True)

    async def first_chunk(self) -> float:
        started = time.perf_counter()
        gen = self.handle.remote(1)
        await gen.__anext__()
        took = time.perf_counter() - started
        async for _ in gen:
            pass
        return took

    async def drain(self, n: int) -> int:
        count = 0
        async for _ in self.handle.remote(n):
            count += 1
        return count


def start_ray_serve(port: int) -> Any:
    from ray import serve
    from starlette.responses import StreamingResponse

    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    class ServeGen:
        async def __call__(self, request: Any) -> Any:
            n = int(request.query_params.get("n", "1"))

            async def body() -> AsyncIterator[str]:
                for i in range(n):
                    yield f"chunk {i}\n"

            return StreamingResponse(body(), media_type="text/plain")

        async def gen(self, n: int = 1) -> AsyncIterator[str]:
            for i in range(n):
                yield f"chunk {i}\n"

    handle = serve.run(ServeGen.bind(), route_prefix="/gen", name="streaming-bench")
    return handle.options(method_name="gen")


async def measure(rows: list[Row], first: int, chunks: int, rounds: int) -> dict[str, dict[str, float]]:
    for row in rows:  # warm up
        await row.first_chunk()
        await row.drain(100)
    firsts: dict[str, list[float]] = {r.name: [] for r in rows}
    for _ in range(first // 10):
        for row in rows:
            for _ in range(10):
                firsts[row.name].append(await row.first_chunk())
    rates: dict[str, list[float]] = {r.name: [] for r in rows}
    for _ in range(rounds):
        for row in rows:
            started = time.perf_counter()
            got = await row.drain(chunks)
            rates[row.name].append(got / (time.perf_counter() - started))
            if got != chunks:
                raise AssertionError(f"{row.name} delivered {got} of {chunks} chunks")
    out = {}
    for row in rows:
        values = sorted(firsts[row.name])
        out[row.name] = {"p50_ms": 1000 * statistics.median(values),
                         "p99_ms": 1000 * values[min(len(values) - 1, int(0.99 * len(values)))],
                         "chunks_per_s": statistics.median(rates[row.name])}
    return out


async def runahead(handle: Any) -> tuple[int, int]:
    """Chunks read, and chunks the replica produced, after a reader stops reading for 1 s."""
    stream = handle.options(method_name="endless", stream=True).remote()
    read = 0
    async for _ in stream:
        read += 1
        if read == 5:
            break
    await asyncio.sleep(1.0)
    produced = await handle.options(method_name="produced").remote()
    stream.cancel()
    return read, produced


class Endless:
    def __init__(self) -> None:
        self.count = 0

    async def endless(self) -> AsyncIterator[str]:
        while True:
            self.count += 1
            yield "x" * 1024

    async def produced(self) -> int:
        return self.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=200, help="streams for time to first chunk")
    parser.add_argument("--chunks", type=int, default=2000, help="chunks per throughput stream")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import serveplane

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, http_options={"port": port})
    client.create_backend("gen", Gen, config={"max_concurrent_queries": 1000, "http_methods": ["http"]},
                          ray_actor_options={"num_cpus": 0})
    client.create_endpoint("gen", backend="gen", route="/gen")
    client.create_backend("endless", Endless, ray_actor_options={"num_cpus": 0})
    client.create_endpoint("endless", backend="endless")
    rows: list[Row] = [Raw(), ServeplaneHandle(client),
                       HTTPRow("serveplane HTTP", f"http://127.0.0.1:{port}/gen")]
    rows[-1].http.headers["X-SERVE-CALL-METHOD"] = "http"  # type: ignore[attr-defined]
    try:
        serve_port = free_port()
        serve_handle = start_ray_serve(serve_port)
        rows += [RayServeHandle(serve_handle), HTTPRow("Ray Serve HTTP", f"http://127.0.0.1:{serve_port}/gen")]
    except ImportError:
        print("note: ray.serve is not installed; run `make bench` to install the bench extra")
    results = asyncio.run(measure(rows, args.first, args.chunks, args.rounds))
    read, produced = asyncio.run(runahead(client.get_handle("endless")))
    raw = results["raw Ray streaming generator"]
    print(f"{'':32} {'first chunk p50':>16} {'p99':>9} {'chunks/s':>10} {'vs raw':>14}")
    for name, r in results.items():
        ratio = f"{r['p50_ms'] / raw['p50_ms']:.2f}x / {r['chunks_per_s'] / raw['chunks_per_s']:.2f}x"
        print(f"{name:32} {r['p50_ms']:13.2f} ms {r['p99_ms']:6.2f} ms {r['chunks_per_s']:10.0f} {ratio:>14}")
    if "Ray Serve HTTP" in results:
        ours, theirs = results["serveplane HTTP"], results["Ray Serve HTTP"]
        print(f"serveplane HTTP vs Ray Serve HTTP: first chunk {theirs['p50_ms'] / ours['p50_ms']:.2f}x "
              f"faster, {ours['chunks_per_s'] / theirs['chunks_per_s']:.2f}x the chunks/s")
    print(f"slow reader: read {read} chunks, the replica produced {produced} (1 KiB each) in the "
          "second after it stopped reading")
    client.shutdown()


if __name__ == "__main__":
    main()
