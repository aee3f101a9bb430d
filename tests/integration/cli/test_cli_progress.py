"""``serveplane apply`` shows replicas starting (and why one fails), not a silent wait;
``serveplane status`` stays plain text in a pipe and ``--json`` stays JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import ray

from tests.conftest import ROOT

pytestmark = [pytest.mark.ray]

MODEL = '''
class Model:
    def __call__(self, request):
        return "ok"

class Broken:
    def __init__(self):
        raise ImportError("no module named 'fake_torch_for_the_test'")
'''

CONFIG = '''
backends:
  - name: good
    import_path: progress_model:Model
    config: {num_replicas: 2}
    ray_actor_options: {num_cpus: 0.1}
  - name: broken
    import_path: progress_model:Broken
    ray_actor_options: {num_cpus: 0.1}
'''


def cli(client, *args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NO_COLOR", None)
    address = ray.get_runtime_context().gcs_address
    return subprocess.run([sys.executable, "-m", "serveplane.cli", "--address", address,
                           "--namespace", client._namespace, *args],
                          capture_output=True, text=True, timeout=240, env=env, cwd=cwd)


@pytest.mark.timeout(300)
def test_apply_shows_replicas_starting_and_why_one_fails(serve_instance, tmp_path):
    (tmp_path / "progress_model.py").write_text(MODEL)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    applied = cli(serve_instance, "apply", str(config), cwd=str(tmp_path))
    out = applied.stdout
    assert applied.returncode == 2, (out, applied.stderr)
    lines = out.splitlines()
    good = [line for line in lines if line.strip().startswith("backend good:")]
    assert good and good[-1].strip().startswith("backend good: 2/2 replicas running"), out
    assert lines.index("+ backend good: progress_model:Model x2") < lines.index(good[-1])
    broken = [line for line in lines if line.strip().startswith("backend broken:")]
    assert broken and all("0/1 replicas running" in line for line in broken), out
    assert any("a replica failed to start:" in line and "fake_torch_for_the_test" in line
               for line in broken), out
    assert "\x1b[" not in out  # a pipe gets no colour codes
    assert "fake_torch_for_the_test" in applied.stderr  # and the command fails, saying why

    status = cli(serve_instance, "status", cwd=str(tmp_path))
    assert status.returncode == 0 and "\x1b[" not in status.stdout
    assert status.stdout.splitlines()[0].split() == ["BACKEND", "RUNNING/TARGET", "STATES"]
    as_json = json.loads(cli(serve_instance, "status", "--json", cwd=str(tmp_path)).stdout)
    assert as_json["backends"]["good"]["replicas"] == {"RUNNING": 2}
