"""Shared fixtures. One Ray instance per pytest session (starting Ray costs ~6 s here).

Tests that need their own cluster (``ray.cluster_utils.Cluster``, a cluster restart) run
their scenario in a subprocess so the shared instance is never torn down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from serveplane.kv_store.auth import StateKey

ROOT = Path(__file__).resolve().parent.parent
# Every controller the tests start, and every CLI they run, uses this state key (never a key
# file in the user's home); tests that read a store directly use TEST_KEY.
os.environ.setdefault("SERVEPLANE_STATE_KEY", "serveplane-tests-state-key-0123456789abcdef")
TEST_KEY = StateKey(os.environ["SERVEPLANE_STATE_KEY"], "$SERVEPLANE_STATE_KEY")
# Logical resources: enough CPUs for a few replicas on a 2-core machine, and two logical
# GPUs so that placement with num_gpus (fractional too) is tested without a GPU.
RAY_NUM_CPUS = 8
RAY_NUM_GPUS = 2


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=RAY_NUM_CPUS, num_gpus=RAY_NUM_GPUS, include_dashboard=False,
                 namespace="serveplane-test", logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray


@pytest.fixture
def serve_instance(ray_session):
    """A fresh controller in its own namespace and GCS KV namespace; shut down after the test."""
    import serveplane

    ns = f"t-{uuid.uuid4().hex[:8]}"
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns)
    try:
        yield client
    finally:
        client.shutdown()


def run_script(code: str, timeout: float = 240.0, env: dict[str, str] | None = None) -> str:
    """Run a Python scenario in a fresh interpreter (its own Ray); return its stdout."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise AssertionError(f"scenario failed (exit {proc.returncode}):\nSTDOUT:\n{proc.stdout[-4000:]}"
                             f"\nSTDERR:\n{proc.stderr[-6000:]}")
    return proc.stdout


class RedisServer:
    """A real redis-server on a free loopback port, with an append-only file so that a
    stop/start keeps the data (like a production Redis restart)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        import shutil
        import socket

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (make test installs it with apt-get)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import time

        import redis

        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir), *auth],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, password=self.password, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_with_password(tmp_path):
    """A real redis-server that requires a password; ``url`` carries it."""
    server = RedisServer(tmp_path, password="redis-pw-" + uuid.uuid4().hex)
    server.start()
    try:
        yield server
    finally:
        server.stop()
