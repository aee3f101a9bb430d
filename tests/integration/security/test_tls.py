"""TLS on both ingresses, against a real proxy with certificates the test makes: a real TLS
client over 127.0.0.1, a wrong CA refused, an expired certificate refused, mutual TLS, and a
certificate rotated without a restart."""

from __future__ import annotations

import os
import socket
import ssl
import time
import uuid

import grpc
import httpx
import pytest

import serveplane
from tests.integration.http.helpers import free_port, proxy
from tests.integration.security.certs import make_ca, make_cert

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(folder, "test-ca"), make_ca(folder, "other-ca")
    return {
        "folder": folder, "ca": ca, "other_ca": other_ca,
        "server": make_cert(folder, ca, "server-1"),
        "server2": make_cert(folder, ca, "server-2"),
        "expired_server": make_cert(folder, ca, "server-expired", days=-1),
        "client": make_cert(folder, ca, "client-ok", client=True),
        "wrong_client": make_cert(folder, other_ca, "client-wrong-ca", client=True),
        "expired_client": make_cert(folder, ca, "client-expired", client=True, days=-1),
    }


def served_files(pki, tmp_path, server="server"):
    """Copies of a server certificate and key, which the test can replace (rotation)."""
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    cert.write_bytes(pki[server].cert.read_bytes())
    key.write_bytes(pki[server].key.read_bytes())
    return cert, key


def peer_name(port: int, ca, client=None) -> str:
    """The CN of the certificate the server presents, through a verifying TLS client."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            return subject["commonName"]


def https(base: str, ca, client=None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return httpx.Client(base_url=base, verify=context, timeout=10)


def refused_handshake(port: int, ca, client=None) -> str:
    """The error a verifying TLS client gets (connecting, or on its first read)."""
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, httpx.ConnectError,
                        httpx.ReadError, httpx.RemoteProtocolError)) as info:
        with https(f"https://127.0.0.1:{port}", ca, client) as c:
            c.get("/-/healthz")
    return str(info.value)


@pytest.mark.timeout(300)
def test_https_serves_a_real_tls_client_and_rotates_its_certificate(ray_session, pki, tmp_path):
    cert, key = served_files(pki, tmp_path)
    with proxy(ssl_certfile=str(cert), ssl_keyfile=str(key)) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        assert client.http_urls[0] == f"https://127.0.0.1:{port}"
        with https(f"https://127.0.0.1:{port}", pki["ca"]) as c:
            assert c.get("/-/healthz").text == "ok"
        assert "CERTIFICATE_VERIFY_FAILED" in refused_handshake(port, pki["other_ca"])  # wrong CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=5)  # plain text is not served
        assert peer_name(port, pki["ca"]) == "server-1"
        # rotation: new files in place (written aside, then renamed over); new handshakes use them
        for src, dst in ((pki["server2"].cert, cert), (pki["server2"].key, key)):
            aside = dst.with_suffix(".new")
            aside.write_bytes(src.read_bytes())
            os.replace(aside, dst)
        deadline = time.monotonic() + 15
        while peer_name(port, pki["ca"]) != "server-2":
            assert time.monotonic() < deadline, "the rotated certificate was never served"
            time.sleep(0.2)
        with https(f"https://127.0.0.1:{port}", pki["ca"]) as c:
            assert c.get("/-/healthz").text == "ok"


@pytest.mark.timeout(300)
def test_an_expired_server_certificate_is_refused_by_the_client(ray_session, pki, tmp_path):
    cert, key = served_files(pki, tmp_path, "expired_server")
    with proxy(ssl_certfile=str(cert), ssl_keyfile=str(key)) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        assert "expired" in refused_handshake(port, pki["ca"])


@pytest.mark.timeout(300)
def test_mutual_tls_needs_a_client_certificate_of_the_ca_that_has_not_expired(ray_session, pki, tmp_path):
    cert, key = served_files(pki, tmp_path)
    with proxy(ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_ca_certs=str(pki["ca"].cert)) as (client, base):
        port = int(base.rsplit(":", 1)[1])
        with https(f"https://127.0.0.1:{port}", pki["ca"], pki["client"]) as c:
            assert c.get("/-/healthz").text == "ok"
        refused_handshake(port, pki["ca"])                        # no client certificate
        refused_handshake(port, pki["ca"], pki["wrong_client"])   # signed by another CA
        refused_handshake(port, pki["ca"], pki["expired_client"])  # expired
        with https(f"https://127.0.0.1:{port}", pki["ca"], pki["client"]) as c:
            assert c.get("/-/healthz").text == "ok"  # and the proxy still serves


def test_tls_options_are_checked_before_anything_starts():
    from serveplane.config import GRPCOptions, HTTPOptions

    with pytest.raises(ValueError, match="ssl_certfile is set but ssl_keyfile is not"):
        HTTPOptions(ssl_certfile="/x.pem")
    with pytest.raises(ValueError, match="ssl_ca_certs \\(mutual TLS\\) is set without ssl_certfile"):
        GRPCOptions(ssl_ca_certs="/ca.pem")


@pytest.mark.timeout(300)
def test_a_missing_certificate_file_is_named_when_the_proxy_starts(ray_session, tmp_path):
    from serveplane.exceptions import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="ssl_certfile '.*nowhere.pem' cannot be read"):
        with proxy(ssl_certfile=str(tmp_path / "nowhere.pem"), ssl_keyfile=str(tmp_path / "k.pem")):
            pass


@pytest.mark.timeout(300)
def test_grpc_serves_tls_and_mutual_tls(ray_session, pki, tmp_path):
    from tests.integration.grpc import echo_pb2, echo_pb2_grpc
    from tests.integration.grpc.backends import Echo
    from tests.integration.grpc.conftest import SERVICERS

    cert, key = served_files(pki, tmp_path)
    ns = f"tls-{uuid.uuid4().hex[:8]}"
    port = free_port()
    client = serveplane.start(kv_store=f"ray://{ns}", namespace=ns, grpc_options={
        "port": port, "servicer_functions": SERVICERS, "ssl_certfile": str(cert),
        "ssl_keyfile": str(key), "ssl_ca_certs": str(pki["ca"].cert)})
    try:
        client.create_backend("echo:a", Echo, "a")
        client.create_endpoint("echo", backend="echo:a")

        def say(client_pair, ca=pki["ca"]):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.cert.read_bytes(),
                private_key=client_pair.key.read_bytes() if client_pair else None,
                certificate_chain=client_pair.cert.read_bytes() if client_pair else None)
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                return echo_pb2_grpc.EchoStub(channel).Say(
                    echo_pb2.EchoRequest(text="tls"), timeout=20, metadata=[("endpoint", "echo")])

        assert say(pki["client"]).text == "tls"
        for bad in (None, pki["wrong_client"], pki["expired_client"]):
            with pytest.raises(grpc.RpcError) as info:
                say(bad)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            say(pki["client"], ca=pki["other_ca"])  # the client refuses a server of another CA
        assert peer_name(port, pki["ca"], pki["client"]) == "server-1"
        for src, dst in ((pki["server2"].cert, cert), (pki["server2"].key, key)):
            aside = dst.with_suffix(".new")
            aside.write_bytes(src.read_bytes())
            os.replace(aside, dst)
        deadline = time.monotonic() + 15
        while peer_name(port, pki["ca"], pki["client"]) != "server-2":
            assert time.monotonic() < deadline, "the rotated certificate was never served over gRPC"
            time.sleep(0.3)
        assert say(pki["client"]).text == "tls"
    finally:
        client.shutdown()
