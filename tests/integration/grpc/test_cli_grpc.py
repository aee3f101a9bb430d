"""``serveplane run`` with a ``grpc:`` block: the proxy starts with the YAML's options, its
address is printed, RPCs are served, and Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import grpc
import pytest
import ray

from tests.conftest import ROOT
from tests.integration.grpc import echo_pb2, echo_pb2_grpc
from tests.integration.grpc.conftest import SERVICERS, free_port

pytestmark = [pytest.mark.ray]

MODEL = """
class Echo:
    def __init__(self, name):
        self.name = name

    def Say(self, request):
        from tests.integration.grpc import echo_pb2

        return echo_pb2.EchoReply(text=request.text, backend=self.name)
"""

CONFIG = """
http: {{port: {http_port}}}
grpc:
  port: {grpc_port}
  servicer_functions: {servicers}
backends:
  - name: echo
    import_path: grpc_cli_model:Echo
    init_args: ["yaml"]
    ray_actor_options: {{num_cpus: 0.1}}
endpoints:
  - name: echo
    backend: echo
"""


@pytest.mark.timeout(300)
def test_serveplane_run_serves_grpc_from_the_yaml(ray_session, tmp_path):
    address = ray.get_runtime_context().gcs_address
    ns = f"cli-{uuid.uuid4().hex[:6]}"
    grpc_port, http_port = free_port(), free_port()
    (tmp_path / "grpc_cli_model.py").write_text(MODEL)
    config = tmp_path / "grpc.yaml"
    config.write_text(CONFIG.format(http_port=http_port, grpc_port=grpc_port, servicers=SERVICERS))
    proc = subprocess.Popen([sys.executable, "-m", "serveplane.cli", "--address", address, "--namespace", ns,
                             "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    output = []
    try:
        deadline = time.monotonic() + 150
        while True:
            line = proc.stdout.readline()
            output.append(line)
            if "serving on" in line:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "".join(output)
        assert f"gRPC: 127.0.0.1:{grpc_port}\n" in output, "".join(output)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="from yaml"), timeout=30)
        assert (reply.text, reply.backend) == ("from yaml", "yaml")
        from serveplane.cli import dashboard_urls

        # the gRPC proxy is a proxy of the namespace too, but serves no dashboard
        assert dashboard_urls(ns) == [f"http://127.0.0.1:{http_port}/-/dashboard"]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(output) + rest
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE   # the proxy stopped with the run
