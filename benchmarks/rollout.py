"""Time from a guard breach to traffic restored, over several rollbacks in one run.

A canary that fails ``--error-rate`` of its requests is rolled out under a live load (an
async caller per slot, each request awaited on its own). Per run it reports:
- decision -> restored: from the controller's roll-back decision (its history entry) to the
  moment this process's router routes the source traffic again;
- first bad answer -> restored: from the first failed canary answer a caller saw to then
  (includes the routers' report period and the samples the guard needs to be certain).
The baseline row, same run: the time a plain ``set_traffic`` takes to reach this router.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time
import uuid

import ray

import serveplane


class Version:
    def __init__(self, name: str, error_rate: float = 0.0) -> None:
        self.name, self.error_rate = name, error_rate

    def __call__(self, x):
        if random.random() < self.error_rate:
            raise RuntimeError("broken canary")
        return self.name


class Load:
    def __init__(self, handle, in_flight: int = 8) -> None:
        self.handle, self.in_flight = handle, in_flight
        self.failures: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async def caller() -> None:
            while not self._stop.is_set():
                try:
                    await self.handle.remote(1)
                except Exception:  # noqa: BLE001 - the canary's failures
                    self.failures.append(time.time())

        await asyncio.gather(*(caller() for _ in range(self.in_flight)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def routed_at(handle, traffic: dict, since_canary: bool) -> float:
    seen_other = not since_canary
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = handle.router.statistics()["traffic"]
        seen_other |= now != traffic
        if seen_other and now == traffic:
            return time.time()
        time.sleep(0.002)
    raise TimeoutError(f"the router never routed {traffic}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--error-rate", type=float, default=0.3)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns)
    client.create_backend("v1", Version, "v1")
    client.create_backend("bad", Version, "bad", error_rate=args.error_rate)
    client.create_endpoint("model", backend="v1")
    handle = client.get_handle("model")
    decision, first_bad, baseline = [], [], []
    with Load(handle) as load:
        for _ in range(args.runs):
            started = time.time()
            client.set_traffic("model", {"v1": 0.5, "bad": 0.5})
            baseline.append(routed_at(handle, {"v1": 0.5, "bad": 0.5}, since_canary=False) - started)
            client.set_traffic("model", {"v1": 1.0})
            routed_at(handle, {"v1": 1.0}, since_canary=True)
            load.failures.clear()
            client.start_rollout("model", "bad", steps=[0.3, 1.0], interval_s=60,
                                 guards={"max_error_rate": 0.05, "min_requests": 20})
            restored = routed_at(handle, {"v1": 1.0}, since_canary=True)
            rollout = client.wait_for_rollout("model", timeout_s=60)
            assert rollout["state"] == "rolled_back", rollout
            decided = next(h["at"] for h in rollout["history"] if h["decision"].startswith("rolled back"))
            decision.append(restored - decided)
            first_bad.append(restored - (load.failures[0] if load.failures else started))
    client.shutdown()
    print(f"\n{args.runs} roll-backs of a canary failing {args.error_rate:.0%} of requests "
          "(live load, 8 callers)\n")
    print("| measure | p50 s | max s |")
    print("|---|---|---|")
    for name, values in (("decision -> this router routes the source", decision),
                         ("first bad answer -> source restored", first_bad),
                         ("baseline: set_traffic -> this router routes it", baseline)):
        print(f"| {name} | {statistics.median(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()
