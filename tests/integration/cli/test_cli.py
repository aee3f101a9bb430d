"""The CLI as a user drives it: subprocesses and real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import httpx
import pytest
import ray

import serveplane
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray]

MODEL = '''
class Model:
    def __init__(self, tag):
        self.tag = tag
    def __call__(self, request):
        return {"tag": self.tag}
'''

CONFIG = '''
backends:
  - name: a
    import_path: cli_model:Model
    init_args: ["a"]
    config: {{num_replicas: 1}}
    ray_actor_options: {{num_cpus: 0.1}}
  - name: b
    import_path: cli_model:Model
    init_args: ["b"]
    ray_actor_options: {{num_cpus: 0.1}}
endpoints:
  - name: ep
    route: /ep
    traffic: {{a: {wa}, b: {wb}}}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(address: str, ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "serveplane.cli", "--address", address, "--namespace", ns, *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))


@pytest.mark.timeout(400)
def test_run_traffic_shadow_status_apply_shutdown(ray_session, tmp_path):
    address = ray.get_runtime_context().gcs_address
    ns = f"cli-{uuid.uuid4().hex[:6]}"
    port = free_port()
    (tmp_path / "cli_model.py").write_text(MODEL)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(wa=1.0, wb=0.0))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "serveplane.cli", "--address", address, "--namespace", ns,
                             "run", str(config), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    output = []
    try:
        deadline = time.monotonic() + 150
        while True:
            line = proc.stdout.readline()
            output.append(line)
            if "serving on" in line:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "".join(output)
        text = "".join(output)
        assert "+ backend a" in text and f"http://127.0.0.1:{port}/ep" in text and "try:  curl" in text
        assert httpx.get(f"http://127.0.0.1:{port}/ep", timeout=30).json() == {"tag": "a"}

        r = cli(address, ns, "traffic", "ep", "a=0", "b=1")
        assert r.returncode == 0, r.stderr
        client = serveplane.connect(namespace=ns)
        assert client.list_endpoints()["ep"]["traffic"] == {"a": 0.0, "b": 1.0}
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/ep", timeout=30).json() != {"tag": "b"}:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        assert cli(address, ns, "shadow", "ep", "a", "0.5").returncode == 0
        assert client.list_endpoints()["ep"]["shadows"] == {"a": 0.5}
        status = cli(address, ns, "status")
        assert status.returncode == 0 and "ep" in status.stdout and "a=0.5" in status.stdout

        r = cli(address, ns, "traffic", "ep", "a=0.5", "b=0.4")
        assert r.returncode == 2 and "sum to 0.9; they must sum to 1" in r.stderr

        # declarative: the file says 0.7/0.3 and no shadow
        config.write_text(CONFIG.format(wa=0.7, wb=0.3))
        dry = cli(address, ns, "apply", str(config), "--dry-run")
        assert dry.returncode == 0 and "~ endpoint ep: traffic" in dry.stdout and "shadow a=0" in dry.stdout
        assert client.list_endpoints()["ep"]["traffic"] == {"a": 0.0, "b": 1.0}  # dry run changed nothing
        applied = cli(address, ns, "apply", str(config))
        assert applied.returncode == 0, applied.stderr
        assert client.list_endpoints()["ep"]["traffic"] == {"a": 0.7, "b": 0.3}
        assert client.list_endpoints()["ep"]["shadows"] == {}
        assert cli(address, ns, "apply", str(config)).stdout.strip() == "no changes"

        bad = tmp_path / "bad.yaml"
        bad.write_text(CONFIG.format(wa=1.0, wb=0.0).replace("num_replicas: 1", "num_replicas: -2"))
        r = cli(address, ns, "apply", str(bad))
        assert r.returncode == 2
        assert f"{bad}:6: field backends.0.config.num_replicas" in r.stderr
        assert client.list_backends()["a"].num_replicas == 1  # nothing applied
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(output) + rest
    assert "shutting down" in rest
    with pytest.raises(serveplane.ControllerUnavailableError):
        serveplane.connect(namespace=ns)
