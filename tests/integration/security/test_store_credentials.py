"""A Redis password in the store URL never shows: not in get_status(), the CLI, errors or
the logs, even while the store is down and every operation fails."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import ray

import serveplane
from serveplane.exceptions import KVStoreUnavailableError
from tests.conftest import ROOT
from tests.integration.security.backends import Model

pytestmark = [pytest.mark.ray]


def session_logs() -> str:
    session = ray._private.worker._global_node.get_session_dir_path()
    text = []
    for path in glob.glob(os.path.join(session, "logs", "*")):
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                text.append(f.read())
    return "\n".join(text)


def test_a_redis_password_never_shows(ray_session, redis_server_with_password):
    password = redis_server_with_password.password
    url = redis_server_with_password.url
    assert password in url
    ns = f"cred-{uuid.uuid4().hex[:6]}"
    client = serveplane.start(kv_store=url, namespace=ns)
    try:
        client.create_backend("m", Model)
        status = client.get_status()
        assert status["kv_store"] == url.replace(password, "***")
        cli = subprocess.run(
            [sys.executable, "-m", "serveplane.cli", "--address", ray.get_runtime_context().gcs_address,
             "--namespace", ns, "status", "--json"], capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
        assert cli.returncode == 0 and json.loads(cli.stdout)["kv_store"] == status["kv_store"]
        assert password not in cli.stdout + cli.stderr

        redis_server_with_password.stop()
        with pytest.raises(KVStoreUnavailableError) as caught:
            client.create_backend("n", Model, blocking=False)
        assert password not in str(caught.value) and "***@127.0.0.1" in str(caught.value)
        time.sleep(2.5)  # the controller checks its epoch every second and logs each failure
        redis_server_with_password.start()
        assert password not in session_logs()
        assert "cannot check the epoch" in session_logs()  # the failures were logged, redacted
    finally:
        client.shutdown()
