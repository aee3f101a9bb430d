"""An attacker who can write the state store but does not hold the state key, on a real
SQLite file and a real Redis, against a real controller, replicas and routers.

The attacker plants a pickle that creates a marker file when loaded, points the backend's
record (code) and the endpoint's record (custom router) at it, and recomputes both records'
checksums in the plain format, primary and copy, as it would have against the previous
format. The controller then restarts (as after a crash) and must refuse both records, report
them in ``get_status()`` and ``serveplane status``, and never let any process load the pickle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import ray

import serveplane
from serveplane.kv_store import open_store
from serveplane.records import CONTROLLER_NAME
from tests.attacker import evil_pickle, plant_blob, rewrite_record
from tests.conftest import ROOT
from tests.integration.security.backends import Model

pytestmark = [pytest.mark.ray]


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_rewritten_record_and_checksum_never_runs_and_is_reported(ray_session, tmp_path, request, kind):
    url = f"sqlite:///{tmp_path}/state.db" if kind == "sqlite" else request.getfixturevalue("redis_server").url
    ns = f"attack-{uuid.uuid4().hex[:6]}"
    prefix = f"serveplane/{ns}"
    marker = tmp_path / "the-attackers-code-ran"
    client = serveplane.start(kv_store=url, namespace=ns)
    try:
        client.create_backend("m", Model, config={"num_replicas": 1})
        client.create_endpoint("ep", backend="m")
        assert client.get_handle("ep").remote(1).result(timeout=30) == {"ok": 1}

        store = open_store(url)  # the attacker's view: the store, no key
        digest = plant_blob(store, prefix, evil_pickle(str(marker)))
        rewrite_record(store, prefix, "backend/m",
                       lambda r: r.update(code_hash=digest, version="v-evil", target_replicas=2))
        rewrite_record(store, prefix, "endpoint/ep",
                       lambda r: r.update(router="custom", router_blob_hash=digest))
        store.close()

        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=ns), no_restart=False)  # a crash: Ray restarts it
        status = wait_for(lambda: (s := client.get_status())["epoch"] > 1 and s, 90, "controller restarted")
        refused = {entry["key"]: entry["error"] for entry in status["refused"]}
        assert set(refused) == {f"{prefix}/records/backend/m", f"{prefix}/records/endpoint/ep"}
        assert all("fails authentication: it was written by the previous, unauthenticated format"
                   in error for error in refused.values())
        assert status["backends"] == {} and status["endpoints"] == {}

        # several control-loop periods later, nothing has loaded the pickle anywhere
        time.sleep(2.0)
        assert client.get_status()["backends"] == {}
        assert not marker.exists(), "the attacker's code ran"

        cli = subprocess.run(
            [sys.executable, "-m", "serveplane.cli", "--address", ray.get_runtime_context().gcs_address,
             "--namespace", ns, "status"], capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
        assert cli.returncode == 0, cli.stderr
        assert "REFUSED STATE: 2 item(s) of the store not loaded, never run" in cli.stdout
        assert f"! checkpoint '{prefix}/records/backend/m' fails authentication" in cli.stdout
        assert not marker.exists()
    finally:
        client.shutdown()
