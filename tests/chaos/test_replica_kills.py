"""Replica kills under load: nothing lost, nothing wrong."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
import ray

from tests.integration.router.backends import Doubler

pytestmark = [pytest.mark.ray, pytest.mark.chaos]


@pytest.mark.timeout(240)
def test_replica_killed_every_0_7s_under_load(serve_instance):
    client = serve_instance
    client.create_backend("d", Doubler, config={"num_replicas": 3, "health_check_period_s": 0.5})
    client.create_endpoint("ep", backend="d")
    h = client.get_handle("ep")
    min_total, min_seconds, max_total, in_flight = 2400, 10.0, 40_000, 32
    stop = threading.Event()
    kills: list[str] = []

    def killer() -> None:
        rng = random.Random(1)
        while not stop.wait(0.7):
            names = [r for rs in h.router.statistics()["replicas"].values() for r in rs]
            if len(names) < 2:
                continue  # keep one alive so the test measures retries, not a full outage
            victim = rng.choice(names)
            try:
                ray.kill(ray.get_actor(victim, namespace=client._namespace), no_restart=True)
                kills.append(victim)
            except ValueError:
                pass

    async def load() -> tuple[int, int]:
        sem = asyncio.Semaphore(in_flight)
        failed = wrong = 0

        async def one(i: int) -> None:
            nonlocal failed, wrong
            async with sem:
                try:
                    if await h.options(timeout_s=60).remote(i) != 2 * i:
                        wrong += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed += 1
                    print("failed:", repr(exc)[:200])

        started = time.monotonic()
        sent = 0
        while sent < max_total and (sent < min_total or time.monotonic() - started < min_seconds):
            await asyncio.gather(*(one(i) for i in range(sent, sent + 400)))
            sent += 400
        return sent, failed, wrong

    thread = threading.Thread(target=killer, daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        total, failed, wrong = asyncio.run(load())
    finally:
        stop.set()
        thread.join(timeout=5)
    elapsed = time.monotonic() - t0
    stats = h.router.statistics()
    print(f"\nsent={total} failed={failed} wrong={wrong} kills={len(kills)} "
          f"retries={stats['retries']} seconds={elapsed:.1f}")
    assert total >= min_total and len(kills) >= 8
    assert failed == 0 and wrong == 0
