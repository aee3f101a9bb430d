"""Replica kills under load: nothing lost, nothing wrong.

3 replicas answer ``2 * x``; 32 requests stay in flight (30 from an event loop, 2 from
blocking threads) while a replica is killed every 0.7 s. Like the controller would, the test starts a replacement for each kill and pushes
the new replica list through the router's config source once it is ready; the router
sees the death first (a request fails on the dead replica) and routes around it alone.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
import ray

from serveplane.records import ReplicaInfo
from tests.integration.router.backends import Doubler

pytestmark = [pytest.mark.ray, pytest.mark.chaos]

IN_FLIGHT = 32
SYNC_CALLERS = 2  # of the 32: driver threads calling .result(), the rest async on one loop
MIN_REQUESTS = 2400
MIN_SECONDS = 12.0
MAX_SECONDS = 60.0
KILL_EVERY_S = 0.7


@pytest.mark.timeout(90)
def test_replica_killed_every_0_7s_under_load(pool):
    pool.backend("d", Doubler, replicas=3)
    h = pool.endpoint("ep", "d")
    stop = threading.Event()
    kills: list[str] = []
    replacements: list[str] = []
    killer_errors: list[BaseException] = []
    replacers: list[threading.Thread] = []

    def killer() -> None:
        rng = random.Random(7)
        try:
            while not stop.wait(KILL_EVERY_S):
                live = [r for r in pool.replicas("d") if r.actor_name not in kills]
                if len(live) < 2:
                    continue  # keep one alive: this measures retries, not a full outage
                victim: ReplicaInfo = rng.choice(live)
                pool.kill(victim)
                kills.append(victim.actor_name)
                replacing = threading.Thread(target=replace, args=(victim,), daemon=True)
                replacing.start()
                replacers.append(replacing)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            killer_errors.append(exc)

    def replace(victim: ReplicaInfo) -> None:
        try:
            # the controller notices the death, starts a replacement and, once it is ready,
            # publishes both changes in one update; until then the router is on its own
            replacement = pool.add_replica("d", publish=False)
            pool.remove_replica(victim, replacement)
            replacements.append(replacement.actor_name)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            killer_errors.append(exc)

    sync_counts = {"sent": 0, "failed": 0, "wrong": 0}
    sync_lock = threading.Lock()

    def sync_caller(offset: int) -> None:
        i = offset
        while not load_done.is_set():
            try:
                ok = h.options(timeout_s=30).remote(i).result(timeout=30) == 2 * i
                outcome = "sent" if ok else "wrong"
            except Exception as exc:  # noqa: BLE001 - counted and reported
                outcome = "failed"
                print("failed (sync):", repr(exc)[:300])
            with sync_lock:
                sync_counts["sent"] += 1
                if outcome != "sent":
                    sync_counts[outcome] += 1
            i += SYNC_CALLERS

    load_done = threading.Event()

    async def load() -> tuple[int, int, int]:
        sem = asyncio.Semaphore(IN_FLIGHT - SYNC_CALLERS)
        failed = wrong = 0

        async def one(i: int) -> None:
            nonlocal failed, wrong
            async with sem:
                try:
                    if await h.options(timeout_s=30).remote(i) != 2 * i:
                        wrong += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed += 1
                    print("failed:", repr(exc)[:300])

        started = time.monotonic()
        sent = 0
        while sent < MIN_REQUESTS or time.monotonic() - started < MIN_SECONDS:
            if time.monotonic() - started > MAX_SECONDS:
                break
            await asyncio.gather(*(one(i) for i in range(sent, sent + 200)))
            sent += 200
        return sent, failed, wrong

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    callers = [threading.Thread(target=sync_caller, args=(10**6 + k,), daemon=True)
               for k in range(SYNC_CALLERS)]
    t0 = time.monotonic()
    thread.start()
    for caller in callers:
        caller.start()
    try:
        sent, failed, wrong = asyncio.run(load())
    finally:
        load_done.set()
        stop.set()
        thread.join(timeout=5)
        for caller in callers:
            caller.join(timeout=40)
    elapsed = time.monotonic() - t0
    sent += sync_counts["sent"]
    failed += sync_counts["failed"]
    wrong += sync_counts["wrong"]
    for replacing in replacers:
        replacing.join(timeout=30)
    stats = h.router.statistics()
    print(f"\nsent={sent} (sync {sync_counts['sent']}) failed={failed} wrong={wrong} "
          f"seconds={elapsed:.1f} kills={len(kills)} "
          f"replacements={len(replacements)} retries={stats['retries']} "
          f"rate={sent / elapsed:.0f}/s")
    assert not killer_errors, killer_errors
    assert sent >= MIN_REQUESTS and len(kills) >= 8
    assert failed == 0 and wrong == 0
    assert stats["in_flight"] == 0 and stats["queued"] == 0
    # the dead are hidden until the controller drops them, then forgotten
    assert set(stats["dead_replicas"]) <= set(kills)
    assert not set(sum(stats["replicas"].values(), [])) & set(kills)
    ray.get([r.actor_handle.ready.remote() for r in pool.replicas("d")], timeout=30)
