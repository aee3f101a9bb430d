"""``python -m tests.sim.dataplane``: run many seeds of the data-plane simulator, or replay one."""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.dataplane.mutations import MUTATIONS
from tests.sim.dataplane.simulator import run_seed
from tests.sim.dataplane.world import Violation


def main() -> int:
    parser = argparse.ArgumentParser(description="deterministic simulation of the data plane")
    parser.add_argument("--seed", type=int, help="replay this one seed, printing every event")
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--steps", type=int, default=120, help="schedule steps per seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every event")
    parser.add_argument("--mutation", choices=sorted(MUTATIONS),
                        help="put one known defect back and count the seeds that catch it")
    args = parser.parse_args()
    if args.mutation:
        with MUTATIONS[args.mutation]():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    started, failed = time.monotonic(), []
    kinds: dict[str, int] = {}
    totals: dict[str, int] = {}
    for seed in seeds:
        try:
            stats = run_seed(seed, steps=args.steps, verbose=args.verbose or args.seed is not None)
        except Violation as exc:
            failed.append(seed)
            if not args.mutation:
                print(f"FAILED {exc}\nreplay: make sim-data SEED={seed}\n", file=sys.stderr)
            else:
                first = str(exc).splitlines()[0]
                kinds[first.split(": ", 1)[-1][:60]] = kinds.get(first.split(": ", 1)[-1][:60], 0) + 1
            continue
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
    elapsed = time.monotonic() - started
    print(f"{len(seeds) - len(failed)} passed, {len(failed)} failed "
          f"({len(seeds)} seeds in {elapsed:.1f}s; {dict(sorted(totals.items()))})")
    if args.mutation:
        print(f"mutation {args.mutation}: caught by {len(failed)} of {len(seeds)} seeds; first violations: "
              f"{sorted(kinds.items(), key=lambda kv: -kv[1])[:3]}")
        return 0 if failed else 1
    if failed:
        print("failing seeds: " + " ".join(map(str, failed[:50])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
