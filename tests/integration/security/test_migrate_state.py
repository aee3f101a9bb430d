"""``serveplane migrate-state`` against a real controller on a real SQLite file: the state
the previous format wrote is refused until the operator migrates it, then loads, with the
replicas that served before still serving."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
import ray

import serveplane
from serveplane.kv_store import open_store
from tests.attacker import to_previous_format
from tests.conftest import ROOT
from tests.integration.security.backends import Model

pytestmark = [pytest.mark.ray]


def cli(ns: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serveplane.cli", "--address", ray.get_runtime_context().gcs_address,
         "--namespace", ns, *args], capture_output=True, text=True, timeout=180,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), cwd=str(ROOT))


def replica_names(ns: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == ns and a["name"].startswith("serveplane:")}


@pytest.mark.timeout(400)
def test_migrate_state_authenticates_the_previous_format_once(ray_session, tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    ns = f"mig-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=url, namespace=ns)
    try:
        client.create_backend("m", Model, config={"num_replicas": 1})
        client.create_endpoint("ep", backend="m")
        handle = client.get_handle("ep")
        assert handle.remote(1).result(timeout=30) == {"ok": 1}
        replicas = replica_names(ns)
        store = open_store(url)
        assert to_previous_format(store, f"serveplane/{ns}") > 0  # what an upgrade finds
        store.close()

        status = client.restart_controller(client.get_status()["epoch"])
        assert status["backends"] == {} and status["endpoints"] == {}
        assert {e["key"].rsplit("/", 2)[-2] for e in status["refused"]} == {"backend", "endpoint", "goals"}

        wrong = cli(ns, "migrate-state", "--kv-store", url,
                    env={"SERVEPLANE_STATE_KEY": "some-other-key-0123456789abcdefghijkl"})
        assert wrong.returncode == 2 and "the running controller of namespace" in wrong.stderr
        assert "run it with the controller's key" in wrong.stderr

        dry = cli(ns, "migrate-state", "--kv-store", url, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "? record:backend/m#" in dry.stdout and "? record:endpoint/ep#" in dry.stdout
        assert "dry run: would migrate" in dry.stdout
        assert client.get_status()["refused"] == status["refused"]  # nothing written

        assert "guarded:" in dry.stdout  # a controller ran here: every item must be named
        wholesale = cli(ns, "migrate-state", "--kv-store", url)
        assert wholesale.returncode == 2 and "name each item you checked with --item" in wholesale.stderr
        items = re.findall(r"^  \? (\S+)", dry.stdout, flags=re.M)
        assert {i.split("#")[0] for i in items} >= {"record:backend/m", "record:endpoint/ep"}
        done = cli(ns, "migrate-state", "--kv-store", url, *[a for i in items for a in ("--item", i)])
        assert done.returncode == 0, done.stderr
        assert "migrated" in done.stdout and "restarted the controller" in done.stdout
        status = client.get_status()
        assert status["refused"] == [] and set(status["backends"]) == {"m"}
        assert set(status["endpoints"]) == {"ep"}
        assert handle.remote(2).result(timeout=30) == {"ok": 2}
        assert replica_names(ns) == replicas  # kept through the refusal and the migration

        again = cli(ns, "migrate-state", "--kv-store", url)
        assert again.returncode == 0 and "nothing to migrate" in again.stdout
        assert client.get_status()["epoch"] == status["epoch"]  # not fenced for nothing
    finally:
        client.shutdown()
