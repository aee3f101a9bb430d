"""The checkpoint codec: round trips, and every kind of damage refused whole, naming the key."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serveplane.exceptions import CorruptCheckpointError, InvalidInputError
from serveplane.kv_store import SCHEMA_VERSION, decode_checkpoint, encode_checkpoint
from serveplane.kv_store.codec import canonical_json
from tests.unit.kv.kv_helpers import json_payloads

KEY = "ns/checkpoint"


@settings(max_examples=100, deadline=None)
@given(payload=json_payloads, epoch=st.integers(0, 2**62))
def test_any_json_payload_round_trips(payload, epoch):
    assert decode_checkpoint(KEY, encode_checkpoint(payload, epoch)) == (epoch, payload)


@settings(max_examples=50, deadline=None)
@given(payload=json_payloads)
def test_encoding_is_canonical_whatever_the_key_order(payload):
    reordered = dict(reversed(list(payload.items())))
    assert encode_checkpoint(payload, 1) == encode_checkpoint(reordered, 1)


def test_format_is_the_documented_one():
    doc = json.loads(encode_checkpoint({"b": 1, "a": [True, None]}, 7))
    canonical = json.dumps({"a": [True, None], "b": 1}, sort_keys=True, separators=(",", ":")).encode()
    assert doc == {"schema_version": SCHEMA_VERSION, "epoch": 7,
                   "checksum": hashlib.sha256(canonical).hexdigest(), "payload": {"a": [True, None], "b": 1}}


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_flipped_payload_byte_is_refused(data):
    encoded = encode_checkpoint({"backends": {"b": {"replicas": 3, "route": "/model"}}}, 2)
    start = encoded.index(b'"payload":') + len(b'"payload":')
    end = encoded.index(b',"schema_version"')
    pos = data.draw(st.integers(start, end - 1), label="pos")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = encoded[:pos] + bytes([encoded[pos] ^ flip]) + encoded[pos + 1:]
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {KEY!r}"):
        decode_checkpoint(KEY, damaged)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_truncation_is_refused(data):
    encoded = encode_checkpoint({"endpoints": {"ep": {"traffic": {"a": 0.5, "b": 0.5}}}}, 4)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {KEY!r}"):
        decode_checkpoint(KEY, encoded[:cut])


def _doc(**changes):
    doc = json.loads(encode_checkpoint({"x": 1}, 3))
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()


_DROP = object()


@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe not json", "is not valid JSON"),
    (b"[1, 2]", "is a JSON list, not an object"),
    (_doc(checksum=_DROP, payload=_DROP), "lacks checksum, payload"),
    (_doc(schema_version=2), "unknown schema_version 2; this serveplane reads version 1"),
    (_doc(schema_version="1"), "unknown schema_version '1'"),
    (_doc(payload={"x": 2}), "fails its checksum"),
    (_doc(checksum="0" * 64), "fails its checksum"),
    (_doc(epoch=-1), "has epoch -1; it must be an int >= 0"),
    (_doc(epoch=True), "has epoch True"),
    (_doc(payload=[1]), "payload of type list; it must be an object"),
], ids=["bad-utf8", "not-an-object", "missing-fields", "unknown-version", "version-as-string",
        "payload-changed", "checksum-changed", "negative-epoch", "bool-epoch", "payload-not-object"])
def test_damaged_checkpoints_are_refused_naming_key_and_rule(data, match):
    with pytest.raises(CorruptCheckpointError, match=f"^checkpoint {KEY!r} .*{match}"):
        decode_checkpoint(KEY, data)


def test_a_null_payload_with_a_matching_checksum_is_not_a_checkpoint():
    data = canonical_json({"schema_version": SCHEMA_VERSION, "epoch": 5, "payload": None,
                           "checksum": hashlib.sha256(b"null").hexdigest()})
    with pytest.raises(CorruptCheckpointError, match="payload of type NoneType; it must be an object"):
        decode_checkpoint(KEY, data)


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
        encode_checkpoint(payload, epoch)
