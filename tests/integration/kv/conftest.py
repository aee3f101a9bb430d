"""Fixtures for the key-value conformance suite: one ``store`` per kind of store.

Ray comes from the session-wide ``ray_session`` and Redis from ``redis_server``, both in
tests/conftest.py: one Ray instance per pytest session, one redis-server per test.
"""

from __future__ import annotations

import uuid

import pytest

from serveplane.kv_store import open_store

STORE_KINDS = ["memory", "ray", "sqlite", "redis"]


@pytest.fixture(params=STORE_KINDS, ids=STORE_KINDS)
def store(request, tmp_path):
    """A fresh, empty store of each kind; closed after the test."""
    kind = request.param
    if kind == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    elif kind == "ray":
        request.getfixturevalue("ray_session")
        url = f"ray://kv-{uuid.uuid4().hex[:12]}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("redis_server").url
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()
