"""TLS files without Ray: the YAML ``http:``/``grpc:`` sections carry them, a context is
re-read in place when its files change, and a change that does not load keeps the old one."""

from __future__ import annotations

import os
import shutil

import pytest

from serveplane.deploy_config import load_config
from serveplane.exceptions import InvalidConfigError
from serveplane.tls import ReloadingContext, TLSFiles

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture
def pki(tmp_path):
    from tests.integration.security.certs import make_ca, make_cert

    ca = make_ca(tmp_path, "ca")
    return ca, make_cert(tmp_path, ca, "one"), make_cert(tmp_path, ca, "two")


def test_the_yaml_sections_take_the_tls_fields(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("http:\n  ssl_certfile: /etc/tls/c.pem\n  ssl_keyfile: /etc/tls/k.pem\n"
                    "  ssl_ca_certs: /etc/tls/ca.pem\ngrpc:\n  ssl_certfile: /etc/tls/c.pem\n"
                    "  ssl_keyfile: /etc/tls/k.pem\n")
    config = load_config(path)
    assert TLSFiles.of(config.http) == TLSFiles("/etc/tls/c.pem", "/etc/tls/k.pem", "/etc/tls/ca.pem")
    assert TLSFiles.of(config.grpc).mutual is False
    path.write_text("http:\n  ssl_certfile: /etc/tls/c.pem\n")
    with pytest.raises(InvalidConfigError, match="ssl_certfile is set but ssl_keyfile is not"):
        load_config(path)


def test_a_changed_certificate_is_loaded_in_place_and_a_broken_one_is_not(pki, tmp_path):
    _, one, two = pki
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(one.cert, cert)
    shutil.copy(one.key, key)
    reloading = ReloadingContext(TLSFiles(str(cert), str(key)))
    context = reloading.context
    assert not reloading.maybe_reload()  # nothing changed
    shutil.copy(two.cert, cert)
    shutil.copy(two.key, key)
    os.utime(cert, ns=(1, 1))  # a distinct stamp even within one clock tick
    assert reloading.maybe_reload() and reloading.reloads == 1 and reloading.context is context
    cert.write_text("-----BEGIN CERTIFICATE-----\nhalf written")
    assert not reloading.maybe_reload() and reloading.reloads == 1  # the previous one keeps serving


def test_an_unreadable_key_is_named(pki, tmp_path):
    _, one, _ = pki
    with pytest.raises(InvalidConfigError, match="ssl_keyfile '.*missing.key' cannot be read"):
        ReloadingContext(TLSFiles(str(one.cert), str(tmp_path / "missing.key")))
