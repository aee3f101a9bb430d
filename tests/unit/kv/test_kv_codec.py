"""The checkpoint codec: round trips, authentication, and every kind of damage refused whole,
naming the key."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serveplane.exceptions import CorruptCheckpointError, InvalidConfigError, InvalidInputError, StateAuthenticationError
from serveplane.kv_store import SCHEMA_VERSION, RecordCodec, StateKey
from serveplane.kv_store.codec import canonical_json, decode_legacy
from tests.unit.kv.kv_helpers import json_payloads

SECRET = "unit-test-secret-0123456789abcdefghij"
KEY = StateKey(SECRET, "unit tests")
CODEC = RecordCodec(KEY, "ns")
NAME = "backend/model"
WHERE = "ns/records/backend/model"


def encode(payload, epoch, name=NAME):
    return CODEC.encode(name, payload, epoch)


def decode(data, name=NAME, codec=CODEC):
    return codec.decode(name, data, WHERE)


def legacy_document(payload, epoch=1):
    """What the previous format wrote: a plain SHA-256 that any writer of the store recomputes."""
    return canonical_json({"schema_version": 1, "epoch": epoch, "payload": payload,
                           "checksum": hashlib.sha256(canonical_json(payload)).hexdigest()})


@settings(max_examples=100, deadline=None)
@given(payload=json_payloads, epoch=st.integers(0, 2**62))
def test_any_json_payload_round_trips(payload, epoch):
    assert decode(encode(payload, epoch)) == (epoch, payload)


@settings(max_examples=50, deadline=None)
@given(payload=json_payloads)
def test_encoding_is_canonical_whatever_the_key_order(payload):
    reordered = dict(reversed(list(payload.items())))
    assert encode(payload, 1) == encode(reordered, 1)


def test_format_is_the_documented_one():
    doc = json.loads(encode({"b": 1, "a": [True, None]}, 7))
    body = json.dumps({"epoch": 7, "payload": {"a": [True, None], "b": 1}, "schema_version": 2},
                      sort_keys=True, separators=(",", ":")).encode()
    parts = [b"serveplane/record/v2", b"ns", NAME.encode(), body]
    mac = hmac.new(SECRET.encode(), b"".join(len(p).to_bytes(8, "big") + p for p in parts), hashlib.sha256)
    assert doc == {"schema_version": SCHEMA_VERSION, "epoch": 7, "mac": mac.hexdigest(),
                   "payload": {"a": [True, None], "b": 1}}


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_flipped_payload_byte_is_refused(data):
    encoded = encode({"backends": {"b": {"replicas": 3, "route": "/model"}}}, 2)
    start = encoded.index(b'"payload":') + len(b'"payload":')
    end = encoded.index(b',"schema_version"')
    pos = data.draw(st.integers(start, end - 1), label="pos")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = encoded[:pos] + bytes([encoded[pos] ^ flip]) + encoded[pos + 1:]
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {WHERE!r}"):
        decode(damaged)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_truncation_is_refused(data):
    encoded = encode({"endpoints": {"ep": {"traffic": {"a": 0.5, "b": 0.5}}}}, 4)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {WHERE!r}"):
        decode(encoded[:cut])


def _doc(**changes):
    doc = json.loads(encode({"x": 1}, 3))
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()


_DROP = object()


@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe not json", "is not valid JSON"),
    (b"[1, 2]", "is a JSON list, not an object"),
    (_doc(mac=_DROP, payload=_DROP), "lacks mac, payload"),
    (_doc(schema_version=3), "unknown schema_version 3; this serveplane reads version 2"),
    (_doc(schema_version="2"), "unknown schema_version '2'"),
    (_doc(payload={"x": 2}), "fails authentication under state key"),
    (_doc(mac="0" * 64), "fails authentication under state key"),
    (_doc(mac="not hex"), "fails authentication under state key"),
    (_doc(epoch=4), "fails authentication under state key"),
    (_doc(epoch=-1), "has epoch -1; it must be an int >= 0"),
    (_doc(epoch=True), "has epoch True"),
    (_doc(payload=[1]), "payload of type list; it must be an object"),
], ids=["bad-utf8", "not-an-object", "missing-fields", "unknown-version", "version-as-string",
        "payload-changed", "mac-changed", "mac-not-hex", "epoch-changed", "negative-epoch",
        "bool-epoch", "payload-not-object"])
def test_damaged_checkpoints_are_refused_naming_key_and_rule(data, match):
    with pytest.raises(CorruptCheckpointError, match=f"^checkpoint {WHERE!r} .*{match}"):
        decode(data)


def test_a_record_is_bound_to_its_name_namespace_and_key():
    encoded = encode({"code_hash": "a" * 64}, 1)
    with pytest.raises(StateAuthenticationError, match="fails authentication"):
        decode(encoded, name="backend/other")  # moved to another record
    with pytest.raises(StateAuthenticationError, match="fails authentication"):
        decode(encoded, codec=RecordCodec(KEY, "other-ns"))  # copied to another namespace
    other = StateKey("another-secret-0123456789abcdefghijkl", "$SERVEPLANE_STATE_KEY")
    with pytest.raises(StateAuthenticationError,
                       match=f"fails authentication under state key {other.id} \\(\\$SERVEPLANE_STATE_KEY\\)"):
        decode(encoded, codec=RecordCodec(other, "ns"))


def test_an_attacker_rewriting_payload_and_checksum_is_refused():
    """The previous format's defence: a SHA-256 any writer recomputes. Both ways an attacker
    would try (the old format, or the new one with a recomputed hash) are refused."""
    evil = {"record": {"code_hash": "e" * 64}}
    with pytest.raises(StateAuthenticationError,
                       match="fails authentication: it was written by the previous, unauthenticated "
                             "format.*serveplane migrate-state"):
        decode(legacy_document(evil))
    forged = canonical_json({"schema_version": 2, "epoch": 1, "payload": evil,
                             "mac": hashlib.sha256(canonical_json(evil)).hexdigest()})
    with pytest.raises(StateAuthenticationError, match="fails authentication under state key"):
        decode(forged)


def test_legacy_documents_are_read_only_by_decode_legacy_with_their_checksum():
    assert decode_legacy(WHERE, legacy_document({"x": 1}, epoch=5)) == (5, {"x": 1})
    damaged = legacy_document({"x": 1}).replace(b'"x":1', b'"x":2')
    with pytest.raises(CorruptCheckpointError, match="fails its checksum.*refusing to migrate it"):
        decode_legacy(WHERE, damaged)
    with pytest.raises(CorruptCheckpointError, match="only version 1 is migrated"):
        decode_legacy(WHERE, encode({"x": 1}, 1).replace(b'"mac"', b'"checksum"'))


@pytest.mark.parametrize("payload, epoch, match", [
    ({"x": float("nan")}, 1, "not JSON-serializable"),
    ({"x": object()}, 1, "not JSON-serializable"),
    ([1, 2], 1, "payload is a list; it must be a dict"),
    (None, 1, "payload is None"),
    ({}, -1, "epoch -1 is invalid"),
    ({}, 1.5, "epoch 1.5 is invalid"),
], ids=["nan", "object", "list", "none", "negative-epoch", "float-epoch"])
def test_encode_refuses_what_it_could_not_decode(payload, epoch, match):
    with pytest.raises(InvalidInputError, match=match):
        encode(payload, epoch)


def test_the_state_key_never_shows_its_secret():
    shown = [repr(KEY), str(KEY), f"{KEY}", KEY.describe(), repr(CODEC)]
    assert all(SECRET not in text for text in shown)
    assert KEY.id in repr(KEY) and "unit tests" in repr(KEY)
    copy = pickle.loads(pickle.dumps(KEY))  # how the controller actor receives it
    assert copy.id == KEY.id and decode(encode({"x": 1}, 1), codec=RecordCodec(copy, "ns")) == (1, {"x": 1})
    with pytest.raises(InvalidConfigError, match="state key from env is 5 bytes; a state key has at least 32"):
        StateKey("short", "env")
    with pytest.raises(InvalidInputError, match="records need a serveplane StateKey"):
        RecordCodec(SECRET, "ns")  # type: ignore[arg-type]
