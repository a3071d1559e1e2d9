"""Decision -> the serialized ``envoy.service.auth.v3.CheckResponse``, written directly.

The bytes transports (:data:`extauthz.edge.GRPC_BYTES`: the built-in HTTP/2 gRPC server, a gRPC
call carried in an HTTP body) need the serialized answer, not a message: building the message
field by field from Python and then serializing it (``Struct.update`` above all: one Python call
per metadata value) was ~15-20 % of a whole check. :func:`encode` writes the protobuf wire
format of the same :func:`~extauthz.respond.grpc.plan` that
:func:`~extauthz.respond.grpc.to_check_response` builds from: what the response says is decided
there, once; this module only lays it out.

The guard: tests/unit/test_grpc_wire.py parses these bytes and requires a message equal to
``to_check_response`` (field by field, presence included) for the decision table of
tests/unit/test_respond.py and for generated decisions (hypothesis), and checks every tag below
against the protobuf descriptors. Byte equality with protobuf's serializer is not a goal (map
order is unspecified anyway).

Wire format (https://protobuf.dev/programming-guides/encoding/): a field is its tag
``(number << 3) | wire_type`` as a varint, then a varint (type 0), 8 little-endian bytes
(type 1, a double) or a varint length and that many bytes (type 2: strings, sub-messages, each
element of a repeated field). proto3 scalars equal to their default are not written; a
sub-message that is set is written even when empty (presence), and so is the member of a
``oneof`` (``Value.kind``) whatever its value.

``dynamic_metadata`` follows ``Struct.update`` exactly (google.protobuf's
``well_known_types._SetStructValue``), failures included: ``None`` -> null_value, ``bool`` ->
bool_value (before numbers: a bool is an int), ``str`` -> string_value, ``int``/``float`` ->
number_value (a double: ``float(value)``, OverflowError for an int beyond a double),
``dict``/``Struct`` -> struct_value, ``list``/``tuple``/``ListValue`` -> list_value, anything
else ValueError; a key is a ``str`` (or UTF-8 ``bytes``, as the upb map accepts), anything else
TypeError; an unpaired surrogate is a UnicodeEncodeError. The check edge turns any of these into
its 503 deny, as it did with the message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2

from extauthz.decision import Decision
from extauthz.respond.grpc import Plan, plan

__all__ = ["encode", "encode_plan"]

# -- tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited) ----------
# envoy.service.auth.v3.CheckResponse
_RESPONSE_STATUS = b"\x0a"            # google.rpc.Status status = 1
_RESPONSE_DENIED = b"\x12"            # DeniedHttpResponse denied_response = 2
_RESPONSE_OK = b"\x1a"                # OkHttpResponse ok_response = 3
_RESPONSE_METADATA = b"\x22"          # google.protobuf.Struct dynamic_metadata = 4
# google.rpc.Status
_STATUS_CODE = b"\x08"                # int32 code = 1
_STATUS_MESSAGE = b"\x12"             # string message = 2
# envoy.service.auth.v3.DeniedHttpResponse
_DENIED_STATUS = b"\x0a"              # envoy.type.v3.HttpStatus status = 1 (its code = 1, enum)
_DENIED_HEADERS = b"\x12"             # repeated HeaderValueOption headers = 2
_DENIED_BODY = b"\x1a"                # string body = 3
# envoy.service.auth.v3.OkHttpResponse
_OK_HEADERS = b"\x12"                 # repeated HeaderValueOption headers = 2
_OK_REMOVE = b"\x2a"                  # repeated string headers_to_remove = 5
_OK_ADD = b"\x32"                     # repeated HeaderValueOption response_headers_to_add = 6
_OK_REMOVE_QUERY = b"\x42"            # repeated string query_parameters_to_remove = 8
# envoy.config.core.v3.HeaderValueOption / HeaderValue
_OPTION_HEADER = b"\x0a"              # HeaderValue header = 1
_OPTION_OVERWRITE = b"\x12\x00"       # google.protobuf.BoolValue append = 2, set and false
_HEADER_KEY = b"\x0a"                 # string key = 1
_HEADER_VALUE = b"\x12"               # string value = 2
_HTTP_STATUS_CODE = b"\x08"           # envoy.type.v3.HttpStatus: StatusCode code = 1
# google.protobuf.Struct / Value / ListValue
_STRUCT_FIELD = b"\x0a"               # map<string, Value> fields = 1 (an entry: key 1, value 2)
_ENTRY_KEY = b"\x0a"
_ENTRY_VALUE = b"\x12"
_LIST_VALUE = b"\x0a"                 # ListValue: repeated Value values = 1
_NULL = b"\x08\x00"                   # Value: NullValue null_value = 1 (NULL_VALUE = 0)
_NUMBER = b"\x11"                     # double number_value = 2
_STRING = b"\x1a"                     # string string_value = 3
_TRUE = b"\x20\x01"                   # bool bool_value = 4
_FALSE = b"\x20\x00"
_KIND_STRUCT = b"\x2a"                # Struct struct_value = 5
_KIND_LIST = b"\x32"                  # ListValue list_value = 6

#: the varint of every length below 128: one byte (every header and metadata string in practice)
_SMALL = tuple(bytes((n,)) for n in range(128))
_double = struct.Struct("<d").pack
_INT32 = range(-(2**31), 2**31)

# The common case in one C call each (bytes %-formatting; %c: one byte, a length below 128),
# built from the tags above. A header (tag, option length, header length, key, value):
_HEADER = b"%c%c" + _OPTION_HEADER + b"%c" + _HEADER_KEY + b"%c%b" + _HEADER_VALUE + b"%c%b"
_HEADER_OVERWRITE = _HEADER + _OPTION_OVERWRITE
#: a Struct field (entry length, key, Value) and one whose Value is a string
_ENTRY = _STRUCT_FIELD + b"%c" + _ENTRY_KEY + b"%c%b" + _ENTRY_VALUE + b"%c%b"
_ENTRY_STRING = (_STRUCT_FIELD + b"%c" + _ENTRY_KEY + b"%c%b" + _ENTRY_VALUE + b"%c"
                 + _STRING + b"%c%b")
#: a ListValue element that is a string
_ITEM_STRING = _LIST_VALUE + b"%c" + _STRING + b"%c%b"


def _varint(n: int) -> bytes:
    """``n`` as a protobuf varint (a negative int32 takes ten bytes, as protobuf writes it)."""
    if n < 0:
        n &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: tag, length, data."""
    n = len(data)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + data


def _int32(tag: bytes, n: int) -> bytes:
    """An int32 (or enum) field; not written when 0 (proto3 default)."""
    if n not in _INT32:
        # what protobuf raises for a value out of an int32's range
        raise ValueError(f"Value out of range: {n}")
    return tag + _varint(n) if n else b""


def _headers(tag: bytes, headers: tuple[tuple[str, str], ...], overwrite: Iterable[bool]) -> bytes:
    """Repeated HeaderValueOption: ``header`` always set (an empty key or value is not
    written, as protobuf does), ``append`` set to false when ``overwrite``."""
    out = []
    number = tag[0]
    for (key, value), ow in zip(headers, overwrite, strict=True):
        k = key.encode()
        v = value.encode()
        kn = len(k)
        vn = len(v)
        if kn and vn and kn + vn < 120:
            if ow:
                out.append(_HEADER_OVERWRITE % (number, kn + vn + 8, kn + vn + 4, kn, k, vn, v))
            else:
                out.append(_HEADER % (number, kn + vn + 6, kn + vn + 4, kn, k, vn, v))
            continue
        header = ((_delimited(_HEADER_KEY, k) if k else b"")
                  + (_delimited(_HEADER_VALUE, v) if v else b""))
        option = _delimited(_OPTION_HEADER, header)
        out.append(_delimited(tag, option + _OPTION_OVERWRITE if ow else option))
    return b"".join(out)


def _strings(tag: bytes, values: tuple[str, ...]) -> bytes:
    return b"".join([_delimited(tag, s.encode()) for s in values])


def _key(key: Any) -> bytes:
    """A Struct map key, as the upb map takes it: a str, or bytes that are valid UTF-8."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        key.decode()  # UnicodeDecodeError, as protobuf raises
        return key
    raise TypeError("bad argument type for built-in operation")


def _struct(data: Any) -> bytes:
    """The fields of a Struct: ``data.items()`` as ``Struct.update`` reads them."""
    out = []
    for key, value in data.items():
        k = key.encode() if type(key) is str else _key(key)
        kn = len(k)
        if type(value) is str:  # the usual value, inline
            s = value.encode()
            n = len(s)
            if kn + n < 122:
                out.append(_ENTRY_STRING % (kn + n + 6, kn, k, n + 2, n, s))
                continue
            v = _delimited(_STRING, s)
        else:
            v = _value(value)
        vn = len(v)
        if kn + vn < 124:
            out.append(_ENTRY % (kn + vn + 4, kn, k, vn, v))
        else:
            out.append(_delimited(_STRUCT_FIELD,
                                  _delimited(_ENTRY_KEY, k) + _delimited(_ENTRY_VALUE, v)))
    return b"".join(out)


def _list(values: Any) -> bytes:
    """The elements of a ListValue."""
    out = []
    for value in values:
        if type(value) is str:
            s = value.encode()
            n = len(s)
            if n < 126:
                out.append(_ITEM_STRING % (n + 2, n, s))
                continue
            out.append(_delimited(_LIST_VALUE, _delimited(_STRING, s)))
        else:
            out.append(_delimited(_LIST_VALUE, _value(value)))
    return b"".join(out)


def _value(value: Any) -> bytes:
    """One google.protobuf.Value, in ``_SetStructValue``'s order of type checks (an exact
    list or dict first: no earlier check can match it)."""
    cls = type(value)
    if cls is list:
        return _delimited(_KIND_LIST, _list(value))
    if cls is dict:
        return _delimited(_KIND_STRUCT, _struct(value))
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        return _delimited(_STRING, value.encode())
    if isinstance(value, (int, float)):
        return _NUMBER + _double(float(value))
    if isinstance(value, (dict, struct_pb2.Struct)):
        return _delimited(_KIND_STRUCT, _struct(value))
    if isinstance(value, (list, tuple, struct_pb2.ListValue)):
        return _delimited(_KIND_LIST, _list(value))
    raise ValueError("Unexpected type")


def encode_plan(p: Plan) -> bytes:
    """The serialized CheckResponse of a :class:`~extauthz.respond.grpc.Plan`."""
    (code, message, allowed, headers, overwrite, headers_to_remove, query_to_remove,
     response_headers_to_add, http_status, body, metadata) = p
    status = _int32(_STATUS_CODE, code)
    if message:
        status += _delimited(_STATUS_MESSAGE, message.encode())
    out = _delimited(_RESPONSE_STATUS, status)
    if allowed:
        ok = _headers(_OK_HEADERS, headers, overwrite)
        if headers_to_remove:
            ok += _strings(_OK_REMOVE, headers_to_remove)
        if response_headers_to_add:
            ok += _headers(_OK_ADD, response_headers_to_add,
                           (False,) * len(response_headers_to_add))
        if query_to_remove:
            ok += _strings(_OK_REMOVE_QUERY, query_to_remove)
        out += _delimited(_RESPONSE_OK, ok)
    else:
        denied = _delimited(_DENIED_STATUS, _int32(_HTTP_STATUS_CODE, http_status))
        denied += _headers(_DENIED_HEADERS, headers, overwrite)
        if body:
            denied += _delimited(_DENIED_BODY, body.encode())
        out += _delimited(_RESPONSE_DENIED, denied)
    if metadata is not None:
        out += _delimited(_RESPONSE_METADATA, _struct(metadata))
    return out


def encode(decision: Decision) -> bytes:
    """The serialized CheckResponse that makes Envoy carry out ``decision`` (parses to a message
    equal to :func:`~extauthz.respond.grpc.to_check_response`'s)."""
    return encode_plan(plan(decision))
