"""A controller with a gRPC proxy on a free 127.0.0.1 port, shared by a test module."""

from __future__ import annotations

import contextlib
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

import serveplane
from tests.waiting import wait_for  # noqa: F401 - the grpc tests import it from here

SERVICERS = ["tests.integration.grpc.echo_pb2_grpc.add_EchoServicer_to_server",
             "tests.integration.grpc.echo_pb2_grpc.add_OtherServicer_to_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Instance:
    client: Any
    address: str
    channel: Any

    def statistics(self) -> dict[str, Any]:
        import ray

        return ray.get(self.client._proxies[-1].statistics.remote(), timeout=30)


@contextlib.contextmanager
def grpc_instance(**grpc_options: Any) -> Iterator[Instance]:
    import grpc

    ns = f"g-{uuid.uuid4().hex[:8]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, grpc_options={
        "port": port, "servicer_functions": SERVICERS, **grpc_options})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Instance(client, f"127.0.0.1:{port}", channel)
    finally:
        channel.close()
        client.shutdown()


@pytest.fixture(scope="module")
def instance(ray_session) -> Iterator[Instance]:
    """Endpoint ``echo`` (backend ``echo:a``, 2 replicas; ``echo:b`` exists, unused) and
    endpoint ``other``."""
    from tests.integration.grpc.backends import Echo, Other

    with grpc_instance(request_timeout_s=10) as inst:
        inst.client.create_backend("echo:a", Echo, "a", config={"num_replicas": 2})
        inst.client.create_backend("echo:b", Echo, "b")
        inst.client.create_backend("other", Other)
        inst.client.create_endpoint("echo", backend="echo:a")
        inst.client.create_endpoint("other", backend="other")
        yield inst
