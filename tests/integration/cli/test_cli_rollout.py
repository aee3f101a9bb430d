"""``serveplane rollout`` and a YAML ``rollout:`` as a user drives them: subprocesses
against a running instance, with live traffic from this process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray

from tests.conftest import ROOT
from tests.integration.rollout.backends import Version
from tests.integration.rollout.test_rollouts import Load

pytestmark = [pytest.mark.ray]

MODEL = '''
import random

class Model:
    def __init__(self, tag, error_rate=0.0):
        self.tag, self.error_rate = tag, error_rate
    def __call__(self, x):
        if random.random() < self.error_rate:
            raise RuntimeError("broken canary")
        return {"version": self.tag}
'''

CONFIG = '''
backends:
  - name: v1
    import_path: roll_model:Model
    init_args: ["v1"]
  - name: bad
    import_path: roll_model:Model
    init_args: ["bad"]
    init_kwargs: {error_rate: 0.5}
endpoints:
  - name: model
    traffic: {v1: 1.0}
    rollout:
      backend: bad
      steps: [0.5, 1.0]
      interval_s: 30
      guards: {max_error_rate: 0.05, min_requests: 10}
'''


def cli(client, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    address = ray.get_runtime_context().gcs_address
    return subprocess.run([sys.executable, "-m", "serveplane.cli", "--address", address,
                           "--namespace", client._namespace, *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))


def test_rollout_commands_start_watch_and_refuse(serve_instance):
    client = serve_instance
    client.create_backend("v1", Version, "v1", timeout_s=60)
    client.create_backend("v2", Version, "v2", timeout_s=60)
    client.create_endpoint("model", backend="v1")
    with Load(client.get_handle("model")):
        r = cli(client, "rollout", "model", "v2", "--steps", "0.5,1", "--interval", "1",
                "--max-error-rate", "0.05", "--min-requests", "10", "--watch")
    assert r.returncode == 0, r.stderr
    assert "model -> v2: running, step 1/2, weight 0.5" in r.stdout
    assert "succeeded, step 2/2, weight 1" in r.stdout and "advanced to step 1" in r.stdout
    status = cli(client, "status")
    assert status.returncode == 0 and "ROLLOUTS" in status.stdout and "model -> v2: succeeded" in status.stdout
    refused = cli(client, "rollout", "pause", "model")
    assert refused.returncode == 2 and "only a shadowing or running rollout can be paused" in refused.stderr
    bad = cli(client, "rollout", "model", "v1", "--steps", "0.5,0.2")
    assert bad.returncode == 2 and "not increasing" in bad.stderr


def test_a_yaml_rollout_is_started_by_apply_and_rolled_back(serve_instance, tmp_path):
    client = serve_instance
    (tmp_path / "roll_model.py").write_text(MODEL)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    dry = cli(client, "apply", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "~ endpoint model: rollout bad steps [0.5, 1.0] every 30s" in dry.stdout
    applied = cli(client, "apply", str(config))
    assert applied.returncode == 0, applied.stderr
    with Load(client.get_handle("model")):
        watched = cli(client, "rollout", "status", "model")
    assert watched.returncode == 0, watched.stderr
    assert "rolled_back" in watched.stdout and "canary error rate" in watched.stdout
    assert client.list_endpoints()["model"]["traffic"] == {"v1": 1.0}
    again = cli(client, "apply", str(config))  # a rolled-back canary is not retried by re-applying
    assert again.returncode == 0 and "rollout" not in again.stdout, again.stdout
