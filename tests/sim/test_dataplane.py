"""The data-plane simulator in ``make test``: a few hundred seeds of the real routers where
their features meet (see ``tests/sim/dataplane/simulator.py``).

A failing seed prints ``make sim-data SEED=<n>`` to replay it with every event;
``make sim-data SEEDS=5000`` runs more.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.dataplane.mutations import MUTATIONS
from tests.sim.dataplane.simulator import DataPlaneSimulation, run_seed
from tests.sim.dataplane.world import Violation

SEEDS = int(os.environ.get("SERVEPLANE_SIM_SEEDS", "300"))
CHUNK = 50


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK), ids=lambda s: f"seeds{s}-{s + CHUNK - 1}")
def test_data_plane_seeds_hold_every_invariant(first):
    failures = []
    for seed in range(first, min(first + CHUNK, SEEDS)):
        try:
            run_seed(seed)
        except Violation as exc:
            failures.append(f"{str(exc).splitlines()[0]}\n    replay: make sim-data SEED={seed}")
    assert not failures, "\n".join(failures)


def test_a_data_plane_seed_replays_exactly():
    first, second = DataPlaneSimulation(91), DataPlaneSimulation(91)
    assert first.run() == second.run()
    assert first.log == second.log


def test_the_schedules_reach_every_kind_of_request_and_event():
    totals: dict[str, int] = {}
    for seed in range(40):
        for key, value in DataPlaneSimulation(seed).run().items():
            totals[key] = totals.get(key, 0) + value
    kinds = {"kind:unary", "kind:stream", "kind:session", "kind:shard", "kind:nested", "kind:fanout"}
    behaviours = {"behaviour:await", "behaviour:cancel", "behaviour:task_cancel", "behaviour:deadline",
                  "behaviour:abandon"}
    events = {"event:kill", "event:drain", "event:unavailable", "event:mcq", "event:batching", "event:traffic"}
    assert kinds | behaviours | events <= set(totals), sorted(kinds | behaviours | events - set(totals))


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_known_defect_put_back_is_caught(name):
    """The simulator catches what it claims to: each defect, put back, fails some seed."""
    with MUTATIONS[name]():
        for seed in range(300):
            try:
                run_seed(seed)
            except Violation:
                return
    pytest.fail(f"no seed of 300 caught the mutation {name!r}")
