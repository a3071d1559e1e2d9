"""The direct CheckResponse encoder (extauthz/respond/grpc_wire.py) says what the message does.

For every decision, ``grpc_wire.encode(decision)`` must parse to a CheckResponse equal to
``to_check_response(decision)``, presence included (compared as protobuf's deterministic
serialization of both), and be no longer than protobuf's own serialization. Proved here for
generated decisions (hypothesis) and for the ways ``Struct.update`` fails; the decision table of
tests/unit/test_respond.py renders every row through both encoders too. Every tag the encoder
writes is checked against the protobuf descriptors.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf import descriptor, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from extauthz._proto.envoy.config.core.v3 import base_pb2
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz._proto.envoy.type.v3 import http_status_pb2
from extauthz._proto.google.rpc import status_pb2
from extauthz.decision import Decision, GrpcCode, Outcome, deny
from extauthz.edge import GRPC_BYTES
from extauthz.errors import Reason
from extauthz.respond import grpc_wire
from extauthz.respond.grpc import to_check_response
from tests.support.hypo import budget

CheckResponse = external_auth_pb2.CheckResponse


def canonical(message: Any) -> tuple[bytes, Any]:
    """A CheckResponse in a form that compares field by field, presence included: its
    serialization without the metadata (no map: fields in number order) and the metadata as
    Python data, every double as its 8 bytes (-0.0 and NaN compare exactly)."""
    rest = CheckResponse()
    rest.CopyFrom(message)
    rest.ClearField("dynamic_metadata")
    metadata = (_data(message.dynamic_metadata) if message.HasField("dynamic_metadata")
                else None)
    return rest.SerializeToString(), metadata


def _data(value: Any) -> Any:
    if isinstance(value, struct_pb2.Struct):
        return {k: _data(v) for k, v in value.fields.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_data(v) for v in value.values]
    kind = value.WhichOneof("kind")
    inner = getattr(value, kind)
    if kind == "number_value":
        inner = struct.pack("<d", inner)
    elif kind in ("struct_value", "list_value"):
        inner = _data(inner)
    return (kind, inner)


def assert_same(decision: Decision) -> bytes:
    """``encode`` parses to ``to_check_response``'s message; returns the bytes."""
    wire = grpc_wire.encode(decision)
    expected = to_check_response(decision)
    parsed = CheckResponse.FromString(wire)
    assert canonical(parsed) == canonical(expected)
    assert parsed.WhichOneof("http_response") == expected.WhichOneof("http_response")
    if not any(map(math.isnan, _numbers(expected.dynamic_metadata))):
        assert parsed == expected  # protobuf's own comparison agrees (NaN != NaN)
    assert len(wire) <= len(expected.SerializeToString())
    return wire


def _numbers(value: Any) -> list[float]:
    if isinstance(value, struct_pb2.Struct):
        return [n for v in value.fields.values() for n in _numbers(v)]
    if isinstance(value, struct_pb2.ListValue):
        return [n for v in value.values for n in _numbers(v)]
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return [value.number_value]
    return _numbers(getattr(value, kind)) if kind in ("struct_value", "list_value") else []


# -- the tags, from the descriptors ------------------------------------------------------------

_LEN = 2  # wire type of strings, bytes, messages (and each element of a repeated one)
_TYPES = {descriptor.FieldDescriptor.TYPE_DOUBLE: 1, descriptor.FieldDescriptor.TYPE_STRING: _LEN,
          descriptor.FieldDescriptor.TYPE_MESSAGE: _LEN, descriptor.FieldDescriptor.TYPE_INT32: 0,
          descriptor.FieldDescriptor.TYPE_ENUM: 0, descriptor.FieldDescriptor.TYPE_BOOL: 0}
_MAP_ENTRY = struct_pb2.Struct.DESCRIPTOR.fields_by_name["fields"].message_type

TAGS = [
    ("_RESPONSE_STATUS", CheckResponse, "status"),
    ("_RESPONSE_DENIED", CheckResponse, "denied_response"),
    ("_RESPONSE_OK", CheckResponse, "ok_response"),
    ("_RESPONSE_METADATA", CheckResponse, "dynamic_metadata"),
    ("_STATUS_CODE", status_pb2.Status, "code"),
    ("_STATUS_MESSAGE", status_pb2.Status, "message"),
    ("_DENIED_STATUS", external_auth_pb2.DeniedHttpResponse, "status"),
    ("_DENIED_HEADERS", external_auth_pb2.DeniedHttpResponse, "headers"),
    ("_DENIED_BODY", external_auth_pb2.DeniedHttpResponse, "body"),
    ("_OK_HEADERS", external_auth_pb2.OkHttpResponse, "headers"),
    ("_OK_REMOVE", external_auth_pb2.OkHttpResponse, "headers_to_remove"),
    ("_OK_ADD", external_auth_pb2.OkHttpResponse, "response_headers_to_add"),
    ("_OK_REMOVE_QUERY", external_auth_pb2.OkHttpResponse, "query_parameters_to_remove"),
    ("_OPTION_HEADER", base_pb2.HeaderValueOption, "header"),
    ("_HEADER_KEY", base_pb2.HeaderValue, "key"),
    ("_HEADER_VALUE", base_pb2.HeaderValue, "value"),
    ("_HTTP_STATUS_CODE", http_status_pb2.HttpStatus, "code"),
    ("_STRUCT_FIELD", struct_pb2.Struct, "fields"),
    ("_ENTRY_KEY", _MAP_ENTRY, "key"),
    ("_ENTRY_VALUE", _MAP_ENTRY, "value"),
    ("_LIST_VALUE", struct_pb2.ListValue, "values"),
    ("_NUMBER", struct_pb2.Value, "number_value"),
    ("_STRING", struct_pb2.Value, "string_value"),
    ("_KIND_STRUCT", struct_pb2.Value, "struct_value"),
    ("_KIND_LIST", struct_pb2.Value, "list_value"),
]


def _tag(message: Any, name: str) -> bytes:
    desc = message if isinstance(message, descriptor.Descriptor) else message.DESCRIPTOR
    field = desc.fields_by_name[name]
    return bytes([field.number << 3 | _TYPES[field.type]])


@pytest.mark.parametrize(("constant", "message", "name"), TAGS, ids=[t[0] for t in TAGS])
def test_every_tag_is_the_descriptors(constant: str, message: Any, name: str) -> None:
    assert getattr(grpc_wire, constant) == _tag(message, name)


def test_the_fixed_fields_are_the_descriptors() -> None:
    value = struct_pb2.Value
    assert _tag(value, "null_value") + b"\x00" == grpc_wire._NULL  # NULL_VALUE = 0
    assert _tag(value, "bool_value") + b"\x01" == grpc_wire._TRUE
    assert _tag(value, "bool_value") + b"\x00" == grpc_wire._FALSE
    # append: a BoolValue that is set and false: present, empty
    assert _tag(base_pb2.HeaderValueOption, "append") + b"\x00" == grpc_wire._OPTION_OVERWRITE
    assert struct_pb2.Value.DESCRIPTOR.fields_by_name["number_value"].type == (
        descriptor.FieldDescriptor.TYPE_DOUBLE)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, -1, -(2**31)])
def test_varints_are_protobufs(n: int) -> None:
    # an int32 field's bytes after its tag are protobuf's varint of the value
    expected = status_pb2.Status(code=n).SerializeToString()
    assert grpc_wire._int32(b"\x08", n) == expected


# -- decisions ------------------------------------------------------------------------------------

_text = st.one_of(
    st.sampled_from(["", "x-auth-subject", "www-authenticate", "content-type", "a" * 130]),
    st.text(max_size=20).filter(lambda s: not any("\ud800" <= c <= "\udfff" for c in s)),
    st.text(st.characters(codec="utf-8"), min_size=100, max_size=300),  # lengths of 2 bytes
)
_names = st.one_of(_text, st.sampled_from(["host", ":authority", ":path", "x-api-key", "cookie"]))
_headers = st.lists(st.tuples(_names, _text), max_size=5).map(tuple)
_keys = st.one_of(st.text(max_size=10, alphabet=st.characters(codec="utf-8")),
                  st.sampled_from(["route", "identity", "", "ключ", "🔑"]))
_scalars = st.one_of(
    st.none(), st.booleans(), _text,
    st.integers(min_value=-(2**80), max_value=2**80),  # beyond 2**53: rounded like float()
    st.floats(allow_nan=True, allow_infinity=True),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=20,
)
_metadata = st.one_of(st.just({}), st.dictionaries(_keys, _json, max_size=5))


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    allowed = draw(st.booleans())
    outcome = (draw(st.sampled_from([Outcome.ALLOW, Outcome.SHADOW_DENY])) if allowed
               else Outcome.DENY)
    return Decision(
        outcome=outcome,
        http_status=200 if allowed else draw(st.sampled_from([400, 401, 403, 429, 503])),
        grpc_code=GrpcCode.OK if allowed else draw(st.sampled_from(list(GrpcCode)[1:])),
        reason=draw(st.sampled_from(list(Reason))),
        route="r",
        upstream_headers=draw(_headers),
        remove_headers=tuple(draw(st.lists(_names, max_size=5))),
        remove_query=tuple(draw(st.lists(_text, max_size=3))),
        response_headers=draw(_headers),
        body=draw(_text),
        dynamic_metadata=draw(_metadata),
    )


@budget(400)
@given(decisions())
def test_the_encoding_parses_to_the_message(decision: Decision) -> None:
    wire = assert_same(decision)
    assert GRPC_BYTES.render(decision, b"") == wire


def _allow(**fields: Any) -> Decision:
    return Decision(outcome=Outcome.ALLOW, http_status=200, grpc_code=GrpcCode.OK,
                    reason=Reason.OK, route="r", **fields)


EDGES = {
    "allow, nothing to say": _allow(),
    "deny, nothing to say": Decision(outcome=Outcome.DENY, http_status=0, grpc_code=GrpcCode.OK,
                                     reason=Reason.OK, route="r"),
    "repeated challenges": deny(401, GrpcCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIAL, "r",
                                "x", challenges=["a", "b", "a"]),
    "only unremovable names": _allow(remove_headers=("host", ":authority", ":path")),
    "empty names and values": _allow(upstream_headers=(("", ""), ("", "v"), ("k", "")),
                                     remove_headers=("",), remove_query=("",),
                                     response_headers=(("", ""),)),
    "empty containers": _allow(dynamic_metadata={"a": {}, "b": [], "c": ()}),
    "numbers": _allow(dynamic_metadata={
        "a": -0.0, "b": math.inf, "c": -math.inf, "d": 2**53 + 1, "e": 2**63 + 1, "f": 0,
        "g": GrpcCode.UNAUTHENTICATED, "h": 1e-320, "i": math.nan}),
    "str and bytes keys, enum strings": _allow(dynamic_metadata={
        "reason": Reason.OK, b"bytes key": {b"nested": "v"}, "": ""}),
    "messages inside": _allow(dynamic_metadata={
        "s": struct_pb2.Struct(fields={"a": struct_pb2.Value(number_value=1)}),
        "l": struct_pb2.ListValue(values=[struct_pb2.Value(string_value="x")])}),
    "long": _allow(upstream_headers=(("x", "v" * 20000),), body="b" * 300,
                   dynamic_metadata={"k" * 200: ["s" * 5000] * 3}),
}


@pytest.mark.parametrize("decision", EDGES.values(), ids=EDGES.keys())
def test_the_edges(decision: Decision) -> None:
    assert_same(decision)


FAILING: Mapping[str, Any] = {
    "an int beyond a double": {"a": 10**400},
    "a nested int beyond a double": {"a": [{"b": -(10**400)}]},
    "a key that is no str": {1: "a"},
    "a nested key that is no str": {"a": {None: 1}},
    "a key that is not UTF-8": {b"\xff": 1},
    "a value of no JSON type": {"a": object()},
    "a set": {"a": {1}},
    "bytes": {"a": b"x"},
    "a mapping that is no dict": {"a": {"b": 1}.items()},
    "a lone surrogate": {"a": "\ud800"},
    "a lone surrogate key": {"\udfff": 1},
}


@pytest.mark.parametrize("metadata", FAILING.values(), ids=FAILING.keys())
def test_it_fails_where_struct_update_fails(metadata: Mapping[str, Any]) -> None:
    decision = _allow(dynamic_metadata=metadata)
    with pytest.raises(Exception) as message_error:
        to_check_response(decision)
    with pytest.raises(type(message_error.value)):
        grpc_wire.encode(decision)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_a_header_that_cannot_be_utf8_fails_both(text: str) -> None:
    for decision in (_allow(upstream_headers=((text, "v"),)), _allow(remove_query=(text,)),
                     replace(deny(403, GrpcCode.PERMISSION_DENIED, Reason.FORBIDDEN, "r", ""),
                             response_headers=(("k", text),))):
        with pytest.raises(UnicodeEncodeError):
            to_check_response(decision)
        with pytest.raises(UnicodeEncodeError):
            grpc_wire.encode(decision)


@pytest.mark.parametrize("code", [2**31, -(2**31) - 1])
def test_a_status_beyond_int32_fails_both(code: int) -> None:
    decision = Decision(outcome=Outcome.DENY, http_status=code, grpc_code=GrpcCode.UNAVAILABLE,
                        reason=Reason.OK, route="r")
    with pytest.raises(ValueError, match="out of range"):
        to_check_response(decision)
    with pytest.raises(ValueError, match="out of range"):
        grpc_wire.encode(decision)


@pytest.mark.parametrize("n", range(110, 135))
def test_lengths_around_one_byte_varints(n: int) -> None:
    """Every length that decides between one and two bytes, where the one-call fast paths end:
    a header, a Struct entry (string or another Value), a list element."""
    text = "v" * n
    for decision in (
        _allow(upstream_headers=(("k", text), (text, "v"), ("kk", text))),
        _allow(response_headers=(("k", text), (text, "v"))),
        deny(401, GrpcCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIAL, "r", text,
             challenges=[text, text[3:]]),
        _allow(dynamic_metadata={"k": text, text: "v", "kk": text[2:], "l": [text, text[1:]]}),
        _allow(dynamic_metadata={"k": {"a": text[5:]}, text: None, "n": [1.5, text[9:]],
                                 "t": {text[7:]: True}}),
        _allow(remove_headers=(text,), remove_query=(text,)),
    ):
        assert_same(decision)
