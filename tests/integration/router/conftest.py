"""Ray for the data-path tests: the suite's one shared instance, started on first use.

Started with the same arguments as ``tests/conftest.py`` (whichever folder runs first
starts Ray, so the resources must not depend on the order) and ``address="local"``, so a
Ray cluster another process runs on this machine is never joined. Never shut down.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.integration.router.pool import ReplicaPool, init_ray


@pytest.fixture(scope="session")
def ray_session():
    init_ray()
    import ray

    yield ray


@pytest.fixture
def pool(ray_session) -> Iterator[ReplicaPool]:
    """Replica actors and a StaticSource standing in for the controller; killed after the test."""
    replicas = ReplicaPool()
    try:
        yield replicas
    finally:
        replicas.shutdown()
