"""The simulator in ``make test``: a few hundred seeds of the real controller under faults.

A failing seed names itself and prints ``make sim SEED=<n>`` to replay it with every event.
``make sim SEEDS=100000`` runs more.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.simulator import Simulation, run_seed
from tests.sim.world import Violation

SEEDS = int(os.environ.get("SERVEPLANE_SIM_SEEDS", "300"))
CHUNK = 50


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK), ids=lambda s: f"seeds{s}-{s + CHUNK - 1}")
def test_seeds_hold_every_invariant(first):
    failures = []
    for seed in range(first, min(first + CHUNK, SEEDS)):
        try:
            run_seed(seed)
        except Violation as exc:
            failures.append(f"{str(exc).splitlines()[0]}\n    replay: make sim SEED={seed}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic-store", "undo-logged-store"])
def test_both_store_kinds_are_simulated(atomic):
    stats = Simulation(12345, steps=300, atomic=atomic).run()
    assert stats["crashes"] > 0 and stats["goals"] > 0 and stats["ticks"] > 0


def test_a_seed_replays_exactly():
    first = Simulation(77, steps=120)
    second = Simulation(77, steps=120)
    assert first.run() == second.run()
    assert first.log == second.log
