"""Fixtures for the long-poll integration tests.

Ray: these tests use the session-wide ``ray_session`` fixture of ``tests/conftest.py`` (one
Ray instance per pytest session, never shut down). It is not redefined here on purpose: a
second definition with other ``ray.init`` arguments would, when this folder runs first,
start Ray with fewer resources than the rest of the suite expects.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from serveplane.long_poll import LongPollClient

NAMESPACE = "serveplane-test"


@pytest.fixture
def make_client(ray_session) -> Iterator[Callable[[str], LongPollClient]]:
    """Independent clients (the constructor, not the registry): each stands in for a process."""
    clients: list[LongPollClient] = []

    def make(host_name: str) -> LongPollClient:
        client = LongPollClient(host_name, namespace=NAMESPACE)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.stop()
