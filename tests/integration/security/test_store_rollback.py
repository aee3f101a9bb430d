"""A SQLite store put back to an older snapshot (a backup restored, an old copy of the file)
under a running cluster: the next controller refuses to start on it, naming both sequences;
the operator who meant it forgets the mark and the controller starts on the old state."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
import ray

import serveplane
from serveplane.kv_store.high_water import high_water_for
from tests.integration.security.backends import Model

pytestmark = [pytest.mark.ray]


def copy_db(src: str, dst: str) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


@pytest.mark.timeout(300)
def test_a_rolled_back_sqlite_store_is_refused_at_the_next_start(ray_session, tmp_path):
    path = str(tmp_path / "state.db")
    url, ns = f"sqlite:///{path}", f"hw-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=url, namespace=ns)
    try:
        client.create_backend("m", Model, config={"num_replicas": 1})
        old = str(tmp_path / "old.db")
        copy_db(path, old)  # a snapshot with backend m only
        client.create_endpoint("ep", backend="m")
        client.set_traffic("ep", {"m": 1.0})
        mark = high_water_for(url, f"serveplane/{ns}")
        assert mark is not None and mark.read() is not None
        epoch = client.get_status()["epoch"]
        copy_db(old, path)  # someone puts the old snapshot back
        with pytest.raises(Exception) as info:
            client.restart_controller(epoch, timeout_s=20)
        text = str(info.value)
        assert "was rolled back" in text and "but this cluster saw sequence" in text, text
        mark.forget()  # the operator meant it, and starts serveplane again
        client = serveplane.start(kv_store=url, namespace=ns)
        status = client.get_status()
        assert set(status["backends"]) == {"m"} and status["endpoints"] == {}
    finally:
        client.shutdown()
