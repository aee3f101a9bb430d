"""API keys, token buckets and admission on a fake clock (no Ray, no sockets)."""

from __future__ import annotations

import logging
import os

import pytest
from pydantic import ValidationError

from serveplane.config import HTTPOptions, explain_validation_error
from serveplane.http.auth import ApiKeys, bearer_token
from serveplane.http.limits import Admission, TokenBuckets

K1, K2, K3 = "key-one-0123456789abcdef", "key-two-0123456789abcdef", "key-three-0123456789abcd"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("header, token", [
    (f"Bearer {K1}", K1), (f"bearer  {K1} ", K1), ("Basic abc", None), ("Bearer", None), (None, None), ("", None),
], ids=["bearer", "case-and-spaces", "basic", "no-token", "missing", "empty"])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_given_keys_and_a_key_file_re_read_when_it_changes(tmp_path, caplog):
    clock = Clock()
    path = tmp_path / "keys"
    path.write_text(f"# operators\n{K2}\n\nshort\n")
    keys = ApiKeys([K1], str(path), clock=clock)
    assert keys.enabled and keys.match(K1) and keys.match(K2) and not keys.match(K3)
    assert keys.match(None) is None and keys.match(K1) != keys.match(K2)  # ids tell keys apart
    assert "skipped 1 line(s) that are not valid API keys" in caplog.text
    assert K1 not in repr(keys) and K2 not in caplog.text
    path.write_text(f"{K3}\n")
    os.utime(path, ns=(1, 1))  # a change the size alone would not show is still seen
    assert keys.match(K2)  # looked at no more than once a second
    clock.now += 1.0
    assert not keys.match(K2) and keys.match(K3) and keys.match(K1)
    path.unlink()
    clock.now += 1.0
    with caplog.at_level(logging.ERROR):
        assert not keys.match(K3) and keys.match(K1)  # an unreadable file accepts none of its keys
    assert "cannot be read" in caplog.text


def test_no_keys_configured_means_no_check_and_a_missing_file_refuses_to_start(tmp_path):
    assert not ApiKeys(None, None).enabled
    assert ApiKeys([], None).enabled  # an empty list accepts nobody: fail closed
    with pytest.raises(ValueError, match="api_keys_file '.*missing' cannot be read"):
        ApiKeys(None, str(tmp_path / "missing"))


def test_token_bucket_allows_the_burst_then_the_rate_and_says_when():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # per key
    clock.now += 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") == pytest.approx(0.5)
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, never beyond


def test_token_buckets_are_bounded():
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock(), max_buckets=100)
    for i in range(10_000):
        buckets.take(f"client-{i}")
    assert len(buckets._buckets) == 100


def test_admission_bounds_requests_and_bodies():
    admission = Admission(max_in_flight=2, max_buffered_bytes=100)
    assert admission.enter() and admission.enter() and not admission.enter()
    assert admission.reserve(60) and not admission.reserve(41) and admission.reserve(40)
    admission.release(100)
    admission.leave()
    assert admission.enter()
    assert admission.statistics() == {"in_flight": 2, "max_concurrent_requests": 2, "peak_in_flight": 2,
                                      "buffered_body_bytes": 0, "max_buffered_body_bytes": 100,
                                      "peak_buffered_body_bytes": 100}


@pytest.mark.parametrize("fields, match", [
    ({"api_keys": ["short-but-secret"[:10]]}, "api_keys: Value error, api_keys\\[0\\] is 10 characters; an API key has at least 16"),
    ({"api_keys": ["has a space 0123456789"]}, "api_keys\\[0\\] has a space, a control or a non-ASCII character"),
    ({"rate_limit_burst": 5}, "rate_limit_burst is set but rate_limit_rps is not"),
    ({"rate_limit_rps": 0}, "rate_limit_rps: Input should be greater than 0"),
    ({"max_body_bytes": 100, "max_buffered_body_bytes": 50},
     "max_buffered_body_bytes \\(50\\) is less than max_body_bytes \\(100\\); one body must fit"),
    ({"max_concurrent_requests": 0}, "max_concurrent_requests: Input should be greater than or equal to 1"),
], ids=["short-key", "key-with-space", "burst-without-rate", "zero-rate", "budget-below-body", "no-requests"])
def test_http_options_refuse_bad_bounds_without_quoting_keys(fields, match):
    with pytest.raises(ValidationError) as caught:
        HTTPOptions(**fields)
    text = explain_validation_error(caught.value)
    assert __import__("re").search(match, text), text
    for key in fields.get("api_keys", []):
        assert key not in text


def test_http_options_never_show_keys_and_derive_defaults():
    options = HTTPOptions(api_keys=[K1], rate_limit_rps=2.5)
    assert K1 not in repr(options) and K1 not in str(options.model_dump())
    assert options.burst == 3 and options.buffered_body_budget == 512 * 1024 * 1024
    assert HTTPOptions(max_body_bytes=2 ** 30).buffered_body_budget == 2 ** 30
    copied = HTTPOptions.model_validate(options.model_dump())  # how the proxy actor receives them
    assert copied.api_keys[0].get_secret_value() == K1
