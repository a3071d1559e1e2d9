"""settings.limits: oversized requests are clean 400/401 decisions with a reason, never errors.

Every deny asserts both the gRPC code and the HTTP status (and the reason on the wire).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from extauthz import sfv
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.authn.hmac_sig import sign, signature_base
from extauthz.config.loader import load_config
from extauthz.config.schema import MAX_CHECK_PAYLOAD_BYTES
from extauthz.decision import Decision, GrpcCode, Outcome
from extauthz.edge import decide
from extauthz.errors import ConfigError, Reason
from extauthz.explain import Trace
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.request import from_check_request, signature_components
from extauthz.respond.grpc import to_check_response
from extauthz.server import Server, ServerOptions
from extauthz.snapshot import load_snapshot
from extauthz.types import Headers
from tests.support.allkinds import (
    API_KEY,
    BASIC_PASSWORD,
    BASIC_USER,
    HMAC_SECRET,
    AllKinds,
    check_request,
    write_all_kinds,
)
from tests.support.certs import xfcc_for

SMALL = {"max_header_bytes": 4096, "max_headers": 24, "max_token_bytes": 256,
         "max_signature_components": 4, "max_body_bytes": 64}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> AllKinds:
    return write_all_kinds(tmp_path_factory.mktemp("limits"), limits=SMALL)


@pytest.fixture
async def engine(kinds: AllKinds) -> AsyncIterator[Engine]:
    snapshot = load_snapshot(kinds.config, Metrics())
    await snapshot.start()
    try:
        yield Engine(Metrics(), snapshot)
    finally:
        await snapshot.close()


async def check(engine: Engine, path: str, headers: Mapping[str, str] | None = None,
                **kwargs: Any) -> Decision:
    decision = await decide(engine, check_request(path, headers, **kwargs))
    to_check_response(decision)  # always buildable
    return decision


def assert_denied(decision: Decision, status: int, reason: Reason) -> None:
    codes = {400: GrpcCode.INVALID_ARGUMENT, 401: GrpcCode.UNAUTHENTICATED}
    assert decision.outcome is Outcome.DENY, decision
    assert (decision.http_status, decision.grpc_code, decision.reason) == (
        status, codes[status], reason), decision
    assert json.loads(decision.body)["reason"] == reason.value
    response = to_check_response(decision)
    assert response.status.code == codes[status].value
    assert response.denied_response.status.code == status


def basic(user: str = BASIC_USER, password: str = BASIC_PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- defaults and configuration ---------------------------------------------------------------


def test_defaults_are_documented_values(tmp_path: Path) -> None:
    kinds = write_all_kinds(tmp_path)
    limits = load_config(kinds.config).main.settings.limits
    assert (limits.max_header_bytes, limits.max_headers, limits.max_token_bytes,
            limits.max_signature_components, limits.max_body_bytes) == (
        64 * 1024, 128, 16 * 1024, 32, 1024 * 1024)
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for name in type(limits).model_fields:
        assert f"`limits.{name}`" in doc, name
    assert f"{MAX_CHECK_PAYLOAD_BYTES:,}" in doc  # the gRPC message rule


def test_limits_out_of_range_name_their_path(tmp_path: Path) -> None:
    kinds = write_all_kinds(tmp_path)
    data = yaml.safe_load(kinds.config.read_text())
    data["settings"]["limits"] = {"max_headers": 0, "max_token_bytes": "big", "max_x": 1}
    kinds.config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(kinds.config)
    paths = {issue.path for issue in info.value.issues}
    assert paths == {"settings.limits.max_headers", "settings.limits.max_token_bytes",
                     "settings.limits.max_x"}


async def test_requests_within_the_limits_are_decided_normally(engine: Engine) -> None:
    d = await check(engine, "/keys/x", {"x-api-key": API_KEY}, body=b"x" * 64)
    assert d.outcome is Outcome.ALLOW and d.http_status == 200


# -- whole request: 400 -------------------------------------------------------------------------


async def test_too_many_headers_is_400(engine: Engine) -> None:
    # 4 pseudo-headers + x-api-key + 19 = 24 names: at the limit
    at_limit = {f"x-h{i}": "v" for i in range(19)}
    d = await check(engine, "/keys/x", {"x-api-key": API_KEY, **at_limit})
    assert d.outcome is Outcome.ALLOW
    d = await check(engine, "/keys/x", {"x-api-key": API_KEY, **at_limit, "x-one-more": "v"})
    assert_denied(d, 400, Reason.TOO_MANY_HEADERS)


async def test_header_bytes_over_the_limit_is_400(engine: Engine) -> None:
    d = await check(engine, "/public/x", {"x-big": "v" * 4096})
    assert_denied(d, 400, Reason.REQUEST_TOO_LARGE)
    # counted over names too, and over the raw (encode_raw_headers) form
    d = await check(engine, "/public/x", {"x" * 4000: "v", "y" * 200: "v"})
    assert_denied(d, 400, Reason.REQUEST_TOO_LARGE)
    raw = [(":path", b"/public/x"), (":method", b"GET"), ("x-big", b"\xff" * 4100)]
    d = await check(engine, "/public/x", raw_headers=raw)
    assert_denied(d, 400, Reason.REQUEST_TOO_LARGE)


async def test_header_size_is_counted_once_when_the_request_is_read() -> None:
    view = from_check_request(check_request("/p", {"a": "bc", "dd": ""}))
    pseudo = len(":method") + 3 + len(":path") + 2 + len(":authority") + len("api.example.com")
    pseudo += len(":scheme") + 4
    assert view.header_bytes == pseudo + 3 + 2
    raw = [("A", b"1"), ("a", b"22"), ("b", b"")]  # repeated names are joined with ","
    view = from_check_request(check_request("/p", raw_headers=raw))
    assert view.headers["a"] == "1,22"
    assert view.header_bytes == len("a") + len("1,22") + len("b")
    # bytes, not characters: UTF-8 as sent, and raw bytes that are not UTF-8 one each
    view = from_check_request(check_request("/p", {"x": "é" * 10}))
    assert view.header_bytes == pseudo + 1 + 20
    raw = [("x", "é".encode() * 10 + b"\xff" * 5)]
    assert from_check_request(check_request("/p", raw_headers=raw)).header_bytes == 1 + 25


def test_repeated_raw_headers_are_joined_in_linear_time() -> None:
    """Regression: joining each repeat onto the previous value was quadratic in the repeats."""
    raw = [("x-r", b"v" * 64)] * 40_000
    started = time.perf_counter()
    view = from_check_request(check_request("/p", raw_headers=raw))
    elapsed = time.perf_counter() - started
    assert len(view.headers["x-r"]) == 40_000 * 65 - 1
    assert elapsed < 1.0, elapsed


async def test_body_over_the_limit_is_400(engine: Engine) -> None:
    d = await check(engine, "/keys/x", {"x-api-key": API_KEY}, body=b"x" * 65)
    assert_denied(d, 400, Reason.BODY_TOO_LARGE)


async def test_size_limits_apply_before_routing_and_on_public_routes(engine: Engine) -> None:
    many = {f"x-h{i}": "v" for i in range(30)}
    for path in ("/public/x", "/nowhere", "/public/../admin"):
        assert_denied(await check(engine, path, many), 400, Reason.TOO_MANY_HEADERS)


# -- credentials: 401 --------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "headers"), [
    ("/jwt/x", {"authorization": "Bearer " + "a" * 257}),
    ("/bearer/x", {"authorization": "Bearer " + "a" * 257}),
    ("/basic/x", {"authorization": "Basic " + "a" * 257}),
    ("/keys/x", {"x-api-key": "k" * 257}),
    ("/keys/x?api_key=" + "k" * 257, {}),
    ("/keys/x", {"cookie": "other=1; ak=" + "k" * 257}),
    ("/any/x", {"x-api-key": "k" * 257}),
    ("/hmac/x", {"signature": "s=:" + "A" * 256 + ":", "signature-input": 's=("@method")'}),
    ("/cavage/x", {"authorization": "Signature " + "a" * 257}),
])
async def test_credential_over_max_token_bytes_is_401(
    engine: Engine, path: str, headers: dict[str, str]
) -> None:
    d = await check(engine, path, headers)
    assert_denied(d, 401, Reason.CREDENTIAL_TOO_LARGE)
    challenges = [v for k, v in d.response_headers if k == "www-authenticate"]
    assert challenges, d


async def test_bearer_challenge_names_the_error(engine: Engine) -> None:
    d = await check(engine, "/jwt/x", {"authorization": "Bearer " + "a" * 257})
    challenge = dict(d.response_headers)["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert 'error_description="credential too large"' in challenge


async def test_token_limit_counts_the_credential_not_the_scheme(engine: Engine) -> None:
    # 256 characters after "Basic " is at the limit: the Basic verifier decides (wrong user)
    user = "u" * 150
    header = basic(user, "p" * (192 - len(user) - 1))
    assert len(header) - len("Basic ") == 256
    d = await check(engine, "/basic/x", {"authorization": header})
    assert d.reason is Reason.INVALID_CREDENTIALS


async def test_public_routes_do_not_read_credentials(engine: Engine) -> None:
    d = await check(engine, "/public/x", {"authorization": "Bearer " + "a" * 1000})
    assert d.outcome is Outcome.ALLOW


async def test_client_certificates_are_not_tokens(engine: Engine, kinds: AllKinds) -> None:
    """An XFCC element (URL-encoded PEM) is longer than max_token_bytes and still verifies."""
    xfcc = xfcc_for(kinds.leaf)
    assert len(xfcc) > SMALL["max_token_bytes"]
    d = await check(engine, "/mtls/x", {"x-forwarded-client-cert": xfcc})
    assert d.outcome is Outcome.ALLOW, d


def _signed_headers(components: tuple[str, ...], path: str) -> dict[str, str]:
    """Signature-Input/Signature over ``components`` of GET ``path`` (RFC 9421, key k1)."""
    headers = {"x-a": "1"}
    view = from_check_request(check_request(path, headers))
    inner = sfv.InnerList([sfv.Item(c) for c in components],
                          {"created": int(time.time()), "keyid": "k1"})
    signature = sign(HMAC_SECRET, signature_base(view, inner))
    return {**headers, "signature-input": "s=" + sfv.serialize_inner_list(inner),
            "signature": "s=" + sfv.serialize_item(sfv.Item(signature))}


async def test_signature_over_max_components_is_401(engine: Engine) -> None:
    required = ("@method", "@authority", "@path", "@query")
    d = await check(engine, "/hmac/x", _signed_headers(required, "/hmac/x"))
    assert d.outcome is Outcome.ALLOW, d  # 4 components: at the limit
    d = await check(engine, "/hmac/x", _signed_headers((*required, "x-a"), "/hmac/x"))
    assert_denied(d, 401, Reason.CREDENTIAL_TOO_LARGE)
    assert d.description == "signature covers too many components"


async def test_cavage_signature_over_max_components_is_401(engine: Engine) -> None:
    names = "(request-target) host date x-a x-b"
    d = await check(engine, "/cavage/x", {
        "authorization": f'Signature keyId="k1",headers="{names}",signature="AAAA"'})
    assert_denied(d, 401, Reason.CREDENTIAL_TOO_LARGE)


async def test_limits_are_explained(engine: Engine) -> None:
    snapshot = engine.snapshot
    assert snapshot is not None
    trace = Trace()
    view = from_check_request(check_request("/keys/x", {"x-api-key": "k" * 300}))
    d = await engine.check(view, trace)
    assert d.reason is Reason.CREDENTIAL_TOO_LARGE
    assert any("max_token_bytes" in n or "credential too large" in n for n in trace.notes)


# -- counting signature components -------------------------------------------------------------


@pytest.mark.parametrize(("headers", "count"), [
    ({}, 0),
    ({"signature-input": 'sig1=("@method" "@path");created=1;keyid="k"'}, 2),
    ({"signature-input": 'a=("x" "y" "z"), b=("1")'}, 3),
    ({"signature-input": 'a=("d";key="a" "d";key="b" "@query-param";name="q")'}, 3),
    ({"signature-input": 'a=("a\\"b" "(" ")")'}, 3),
    ({"signature-input": 'a=("x" "y"'}, 2),
    ({"signature-input": '"x" "y"'}, 0),
    ({"authorization": 'Signature keyId="k",headers="(request-target) host date"'}, 3),
    ({"signature": 'keyId="k", headers="a b c d"'}, 4),
    ({"authorization": 'Bearer headers="a b"'}, 2),
])
def test_signature_components(headers: dict[str, str], count: int) -> None:
    assert signature_components(Headers(headers)) == count


def test_signature_component_counting_is_linear() -> None:
    for hostile in ('"' * 200_000, "(" * 100_000 + '"x"' * 30_000, ' headers="' * 20_000,
                    '("\\' * 60_000):
        started = time.perf_counter()
        signature_components(Headers({"signature-input": hostile, "authorization": hostile,
                                      "signature": hostile}))
        assert time.perf_counter() - started < 0.5


# -- one gRPC message ----------------------------------------------------------------------------


def test_limits_must_fit_in_one_grpc_message(tmp_path: Path) -> None:
    """Over gRPC's 4 MiB receive limit a CheckRequest never reaches Check (RESOURCE_EXHAUSTED,
    which Envoy turns into its status_on_error 403): such limits are refused at load."""
    kinds = write_all_kinds(tmp_path, limits={"max_body_bytes": MAX_CHECK_PAYLOAD_BYTES,
                                              "max_header_bytes": 64 * 1024})
    with pytest.raises(ConfigError) as info:
        load_config(kinds.config)
    (issue,) = info.value.issues
    assert issue.path == "settings.limits"
    assert "one 4194304-byte gRPC message" in issue.message


async def test_largest_allowed_request_is_a_clean_400_over_grpc(tmp_path: Path) -> None:
    """At the largest limits the schema allows, a request just over both limits still arrives
    and is answered 400 (not a gRPC error)."""
    header_limit = 512 * 1024
    kinds = write_all_kinds(tmp_path, limits={
        "max_header_bytes": header_limit, "max_body_bytes": MAX_CHECK_PAYLOAD_BYTES - header_limit})
    server = Server(ServerOptions(str(kinds.config), "127.0.0.1:0", "127.0.0.1:0",
                                  grace_seconds=1))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            body = b"x" * (MAX_CHECK_PAYLOAD_BYTES - header_limit + 1)
            headers = {"x-big": "v" * (header_limit - 200)}
            response = await stub.Check(check_request("/public/x", headers, body=body),
                                        timeout=10)
    finally:
        await server.stop()
    assert response.status.code == GrpcCode.INVALID_ARGUMENT.value
    assert response.denied_response.status.code == 400
    assert json.loads(response.denied_response.body)["reason"] == Reason.BODY_TOO_LARGE.value
