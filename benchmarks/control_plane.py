"""Control-plane latency on a real Ray instance.

- goal latency of ``create_backend`` with 1 and 8 replicas (call -> all replicas RUNNING);
- ``set_traffic`` round trip (checkpoint write + long-poll notify);
- controller recovery: kill -> restarted controller has its replicas RUNNING again.

Baseline in the same run: starting the same number of plain Ray actors and waiting for a
method call on each (the floor any control plane pays for actor start-up here).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import ray

import serveplane
from serveplane.records import CONTROLLER_NAME


def echo(x):
    return x


@ray.remote(num_cpus=0.1)
class Plain:
    def ping(self):
        return 1


def raw_actor_start(n: int) -> float:
    t0 = time.perf_counter()
    actors = [Plain.remote() for _ in range(n)]
    ray.get([a.ping.remote() for a in actors])
    elapsed = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv", default=None, help="kv store URL (default: ray://<fresh namespace>)")
    args = parser.parse_args()
    ray.init(num_cpus=16, include_dashboard=False, logging_level="ERROR")
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=args.kv or f"ray://{ns}", namespace=ns)
    rows = []
    for n in (1, 8):
        ours, raw = [], []
        for i in range(args.repeats):
            tag = f"b{n}-{i}"
            t0 = time.perf_counter()
            client.create_backend(tag, echo, ray_actor_options={"num_cpus": 0.1},
                                  config={"num_replicas": n})
            ours.append(time.perf_counter() - t0)
            client.delete_backend(tag)
            raw.append(raw_actor_start(n))
        rows.append((f"create_backend, {n} replica(s)", statistics.median(ours), statistics.median(raw)))
    client.create_backend("t1", echo, ray_actor_options={"num_cpus": 0.1})
    client.create_backend("t2", echo, ray_actor_options={"num_cpus": 0.1})
    client.create_endpoint("ep", backend="t1")
    samples = []
    for i in range(50):
        w = (i % 10) / 10
        t0 = time.perf_counter()
        client.set_traffic("ep", {"t1": w, "t2": 1 - w})
        samples.append(time.perf_counter() - t0)
    rows.append(("set_traffic round trip", statistics.median(samples), None))

    client.create_backend("rec", echo, ray_actor_options={"num_cpus": 0.1}, config={"num_replicas": 4})
    recoveries = []
    for _ in range(args.repeats):
        epoch = client.get_status()["epoch"]
        t0 = time.perf_counter()
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=ns), no_restart=False)
        while True:
            try:
                st = client.get_status()
                if st["epoch"] > epoch and st["backends"]["rec"]["replicas"].get("RUNNING") == 4:
                    break
            except Exception:  # noqa: BLE001 - restarting
                pass
            time.sleep(0.02)
        recoveries.append(time.perf_counter() - t0)
    rows.append(("controller recovery (kill -> 4 replicas RUNNING)", statistics.median(recoveries), None))
    client.shutdown()

    print("| operation | serveplane (median s) | raw Ray actors (median s) | ratio |")
    print("|---|---|---|---|")
    for name, ours_s, raw_s in rows:
        ratio = f"{ours_s / raw_s:.2f}x" if raw_s else "-"
        raw_txt = f"{raw_s:.3f}" if raw_s else "-"
        print(f"| {name} | {ours_s:.3f} | {raw_txt} | {ratio} |")


if __name__ == "__main__":
    main()
