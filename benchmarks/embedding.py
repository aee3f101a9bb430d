"""Sentences per second for the embedding example: no batching vs router-side vs
replica-side batching, with 1 and 2 replicas, in one run. CPU here; the same script uses the
GPU where Ray has one (``--gpus 0.5`` puts two replicas on one GPU)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import ray

import serveplane

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from embedding import model as embedding_model  # noqa: E402

cloudpickle.register_pickle_by_value(embedding_model)


class Unbatched(embedding_model.Embedder):
    """The same model without @serveplane.batch: one encode call per request."""

    async def __call__(self, request):  # type: ignore[override]
        texts = embedding_model._texts(request)
        return embedding_model.Embeddings(model=self.version, device=self.device, vectors=self.encode(texts))


def sentences_per_second(handle, n: int, in_flight: int = 32) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await handle.remote([f"benchmark sentence number {i} about serving models"])

        await asyncio.gather(*(one(i) for i in range(32)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--gpus", type=float, default=0.0, help="num_gpus per replica")
    args = parser.parse_args()
    ray.init(include_dashboard=False, logging_level="ERROR")
    ns = f"embbench-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns)
    options = {"num_cpus": 1, **({"num_gpus": args.gpus} if args.gpus else {})}
    modes = [("none", Unbatched, {}), ("replica-side", embedding_model.Embedder, {}),
             ("router-side", embedding_model.Embedder, {"batch_size": 32, "batch_timeout_s": 0.005})]
    results = {}
    for replicas in (1, 2):
        for mode, cls, endpoint_opts in modes:
            tag = f"e{replicas}-{mode}"
            client.create_backend(tag, cls, "v1", True, ray_actor_options=options,
                                  config={"num_replicas": replicas, "max_concurrent_queries": 64}, timeout_s=600)
            client.create_endpoint(tag, backend=tag, **endpoint_opts)
            handle = client.get_handle(tag)
            while len(handle.router.statistics()["replicas"].get(tag, [])) < replicas:
                time.sleep(0.1)
            device = handle.options(method_name="info").remote().result(timeout=60)["device"]
            results[(replicas, mode)] = (sentences_per_second(handle, args.sentences), device)
            client.delete_endpoint(tag)
            client.delete_backend(tag)
    client.shutdown()
    print("| replicas | batching | device | sentences/s | vs no batching |")
    print("|---|---|---|---|---|")
    for (replicas, mode), (rate, device) in results.items():
        print(f"| {replicas} | {mode} | {device} | {rate:.0f} | {rate / results[(replicas, 'none')][0]:.2f}x |")


if __name__ == "__main__":
    main()
