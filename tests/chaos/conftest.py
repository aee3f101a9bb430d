"""Ray for the chaos tests: the suite's one shared instance (see tests/integration/router/conftest.py)."""

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
    replicas = ReplicaPool()
    try:
        yield replicas
    finally:
        replicas.shutdown()
