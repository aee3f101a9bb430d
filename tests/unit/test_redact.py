"""Credentials of a store URL never show: repr, errors, status text."""

from __future__ import annotations

import socket

import pytest

from serveplane.exceptions import InvalidConfigError, KVStoreUnavailableError
from serveplane.kv_store import RecordStore, open_store
from serveplane.redact import redact_text, redact_url
from tests.conftest import TEST_KEY


@pytest.mark.parametrize("url, shown", [
    ("redis://app:s3cret@db:6379/0", "redis://app:***@db:6379/0"),
    ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
    ("redis://s3cret@db/0", "redis://***@db/0"),
    ("redis://db:6379/0?password=s3cret&socket_timeout=1", "redis://db:6379/0?password=***&socket_timeout=1"),
    ("redis://a:s3cret%40x@db/0", "redis://a:***@db/0"),
    ("redis://db:6379/0", "redis://db:6379/0"),
    ("sqlite:///var/lib/s.db", "sqlite:///var/lib/s.db"),
    ("ray://serveplane", "ray://serveplane"),
    ("memory://", "memory://"),
], ids=["user-password", "password", "lone-user", "query", "percent-encoded", "no-credentials",
        "sqlite", "ray", "memory"])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"connecting to {url} failed", url) == f"connecting to {shown} failed"


def test_redact_text_masks_a_password_the_message_repeats():
    url = "redis://app:p%40ss@db/0"
    assert redact_text("AUTH p@ss failed; AUTH p%40ss failed", url) == "AUTH *** failed; AUTH *** failed"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_redis_password_never_shows_in_repr_or_errors():
    url = f"redis://app:s3cret@127.0.0.1:{closed_port()}/0"
    store = open_store(url)
    records = RecordStore(store, "ns", key=TEST_KEY)
    with pytest.raises(KVStoreUnavailableError) as caught:
        records.read_all()
    shown = [repr(store), repr(records), str(caught.value), caught.value.store, repr(caught.value)]
    assert all("s3cret" not in text for text in shown), shown
    assert "redis://app:***@127.0.0.1" in str(caught.value)
    with pytest.raises(InvalidConfigError) as bad:
        open_store("redis://app:s3cret@localhost:port/0")
    assert "s3cret" not in str(bad.value) and "***" in str(bad.value)
    with pytest.raises(InvalidConfigError) as unknown:
        open_store("etcd://app:s3cret@localhost:2379")
    assert "s3cret" not in str(unknown.value)
