"""Control-plane scale with fake replicas (no Ray): 10, 100, 1000 backends x 10 replicas.

Measures, per size:
- control-loop tick time in steady state (everything converged);
- checkpoint: total stored size, and bytes + time written for one change (set_traffic on
  one endpoint, update_backend_config on one backend), on a SQLite file;
- long-poll fan-out: 1000 listeners on one key, time from notify to all answered.
The baseline in the same run is the 10-backend case: a change should cost the same at
1000 backends (O(that record)), while the tick grows with the state (O(all)).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid

from serveplane.backend_state.fake import FakeReplicaActorWrapper
from serveplane.controller.controller import ServeController
from serveplane.long_poll import LongPollHost


def build(n_backends: int, replicas: int, url: str) -> ServeController:
    FakeReplicaActorWrapper.registry.clear()
    FakeReplicaActorWrapper.existing_actors.clear()
    ctrl = ServeController(url, f"scale{n_backends}", run_loop=False,
                           wrapper_factory=lambda b, t: FakeReplicaActorWrapper(b, t, auto_ready=True))
    ctrl._sweep_orphans = lambda: None
    return ctrl


def measure(n_backends: int, replicas: int, db_dir: str) -> dict[str, float]:
    url = f"sqlite:///{db_dir}/scale-{n_backends}-{uuid.uuid4().hex[:6]}.db"
    ctrl = build(n_backends, replicas, url)
    loop = asyncio.new_event_loop()
    for i in range(n_backends):
        loop.run_until_complete(ctrl.create_backend(f"b{i}", b"code", b"init", {"num_cpus": 0.1},
                                                    {"num_replicas": replicas}))
        loop.run_until_complete(ctrl.create_endpoint(f"ep{i}", f"b{i}", f"/ep{i}", ["GET"]))
    for _ in range(5):
        ctrl.control_step(time.monotonic())
    assert not ctrl._goals.to_checkpoint(), "did not converge"
    ticks = []
    for _ in range(20):
        t0 = time.perf_counter()
        ctrl.control_step(time.monotonic())
        ticks.append(time.perf_counter() - t0)

    written: list[int] = []
    original = ctrl._store.write

    def counting(epoch, records):
        from serveplane.kv_store.checkpoint import encode_checkpoint

        written.append(sum(len(encode_checkpoint({"record": r}, epoch)) for r in records.values()))
        return original(epoch, records)

    ctrl._store.write = counting  # type: ignore[method-assign]
    traffic_times, config_times = [], []
    for i in range(10):
        t0 = time.perf_counter()
        loop.run_until_complete(ctrl.shadow_traffic("ep0", "b1", 0.1 * (i % 5)))
        traffic_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loop.run_until_complete(ctrl.update_backend_config("b0", {"max_concurrent_queries": 10 + i}))
        config_times.append(time.perf_counter() - t0)
    loop.close()
    return {
        "tick_ms": statistics.median(ticks) * 1000,
        "checkpoint_total_kb": ctrl._store.size_bytes() / 1024,
        "change_bytes": statistics.median(written),
        "endpoint_change_ms": statistics.median(traffic_times) * 1000,
        "backend_change_ms": statistics.median(config_times) * 1000,
    }


def fanout(listeners: int) -> float:
    async def main() -> float:
        host = LongPollHost(timeout_s=60)
        host.notify_changed("endpoint:ep", 0)
        snapshot = host.get("endpoint:ep").snapshot_id
        tasks = [asyncio.ensure_future(host.listen_for_change({"endpoint:ep": snapshot}))
                 for _ in range(listeners)]
        others = [asyncio.ensure_future(host.listen_for_change({f"endpoint:other{i}": None}))
                  for i in range(listeners)]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        host.notify_changed("endpoint:ep", 1)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        assert not any(t.done() for t in others), "a change to one key woke other keys' listeners"
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        return elapsed

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--replicas", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append((n, measure(n, args.replicas, tmp)))
    base = rows[0][1]
    print(f"| backends x {args.replicas} replicas | tick ms | checkpoint total KiB | bytes per change | "
          "endpoint change ms | backend change ms | change cost vs smallest |")
    print("|---|---|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n} | {r['tick_ms']:.2f} | {r['checkpoint_total_kb']:.0f} | {r['change_bytes']:.0f} | "
              f"{r['endpoint_change_ms']:.2f} | {r['backend_change_ms']:.2f} | "
              f"{r['backend_change_ms'] / base['backend_change_ms']:.2f}x |")
    print()
    print(f"long-poll fan-out, 1000 listeners on one key (1000 others untouched): "
          f"{fanout(1000) * 1000:.1f} ms from notify to all answered")


if __name__ == "__main__":
    main()
