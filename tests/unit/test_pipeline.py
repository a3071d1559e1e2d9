"""The pipeline end to end in process: route -> authn -> authz -> decision (no gRPC)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.authn.jwt import JwtAuthenticator
from extauthz.config.loader import load_config
from extauthz.decision import GrpcCode, Outcome
from extauthz.errors import ConfigError, Reason
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.request import _parse_query
from extauthz.snapshot import Snapshot, compile_config
from extauthz.types import AuthMethod, Identity
from tests.support.builders import make_view
from tests.support.tokens import ec_key, jwks

KEY = "eak_pipeline-test-key-0123456789"
RO_KEY = "eak_pipeline-readonly-key-987654"
REGISTRY = {"api_key": ApiKeyAuthenticator.from_spec}

CONFIG = f"""
settings: {{unmatched: deny}}
authenticators:
  keys:
    api_key:
      sources: [{{header: x-api-key}}, {{query: api_key}}, {{cookie: k}}]
consumers:
- name: alice
  keys:
  - {{id: k1, hash: "{hash_api_key(KEY)}", scopes: [orders:read, orders:write]}}
- name: bob
  keys:
  - {{id: b1, hash: "{hash_api_key(RO_KEY)}", scopes: [orders:read]}}
routes:
- name: public
  match: {{prefix: /public/}}
  public: true
- name: orders-write
  match: {{template: "/v1/users/{{user_id}}/orders", methods: [POST]}}
  authn: [keys]
  authz: {{scopes_all: [orders:write]}}
- name: orders
  match: {{prefix: /v1/}}
  authn: [keys]
"""


def snapshot(tmp_path: Path, text: str = CONFIG) -> Snapshot:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return compile_config(load_config(path), Metrics(), registry=REGISTRY)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(Metrics(), snapshot(tmp_path))


async def test_allow_injects_identity_and_strips_credentials(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders", headers={
        "x-api-key": KEY, "x-auth-subject": "mallory", "x-auth-anything": "x"}))
    assert d.outcome is Outcome.ALLOW and d.http_status == 200 and d.grpc_code is GrpcCode.OK
    headers = dict(d.upstream_headers)
    assert headers["x-auth-subject"] == "alice"
    assert headers["x-auth-consumer"] == "alice"
    assert headers["x-auth-method"] == "api_key"
    assert headers["x-auth-scopes"] == "orders:read orders:write"
    assert "x-api-key" in d.remove_headers
    # spoofed header is overwritten (set by us), the other one removed
    assert "x-auth-anything" in d.remove_headers
    assert "x-auth-subject" not in d.remove_headers
    assert d.dynamic_metadata["identity"]["subject"] == "alice"
    assert d.route == "orders"


async def test_spoofed_identity_header_removed_on_public_route(engine: Engine) -> None:
    d = await engine.check(make_view("/public/x", headers={"x-auth-subject": "admin"}))
    assert d.allowed and d.reason is Reason.PUBLIC
    assert d.remove_headers == ("x-auth-subject",)
    assert d.upstream_headers == ()


async def test_query_and_cookie_credentials_stripped(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders", query={"api_key": KEY, "page": "2"}))
    assert d.allowed and d.remove_query == ("api_key",)
    d = await engine.check(make_view("/v1/orders", headers={"cookie": f"theme=dark; k={KEY}"}))
    assert d.allowed and ("cookie", "theme=dark") in d.upstream_headers
    d = await engine.check(make_view("/v1/orders", headers={"cookie": f"k={KEY}"}))
    assert d.allowed and "cookie" in d.remove_headers


async def test_missing_credential_401_with_challenge(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders"))
    assert d.outcome is Outcome.DENY
    assert d.http_status == 401 and d.grpc_code is GrpcCode.UNAUTHENTICATED
    assert d.reason is Reason.MISSING_CREDENTIAL
    assert ("www-authenticate", 'ApiKey realm="extauthz", header="x-api-key"') in (
        d.response_headers)
    body = json.loads(d.body)
    assert body["status"] == 401 and body["reason"] == "missing_credential"


async def test_invalid_credential_401_invalid_token(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders", headers={"x-api-key": "eak_wrong"}))
    assert d.http_status == 401 and d.grpc_code is GrpcCode.UNAUTHENTICATED
    assert d.reason is Reason.INVALID_API_KEY
    challenge = dict(d.response_headers)["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert "eak_wrong" not in d.body and "eak_wrong" not in challenge


async def test_insufficient_scope_403_with_template(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/users/bob/orders", method="POST",
                                     headers={"x-api-key": RO_KEY}))
    assert d.http_status == 403 and d.grpc_code is GrpcCode.PERMISSION_DENIED
    assert d.reason is Reason.INSUFFICIENT_SCOPE
    # API keys are not bearer tokens: no RFC 6750 challenge on 403
    assert "www-authenticate" not in dict(d.response_headers)
    d = await engine.check(make_view("/v1/users/bob/orders", method="POST",
                                     headers={"x-api-key": KEY}))
    assert d.allowed and d.route == "orders-write"


async def test_no_route_403(engine: Engine) -> None:
    d = await engine.check(make_view("/elsewhere"))
    assert d.http_status == 403 and d.grpc_code is GrpcCode.PERMISSION_DENIED
    assert d.reason is Reason.NO_ROUTE


async def test_unknown_route_name_from_envoy_denied(engine: Engine) -> None:
    d = await engine.check(make_view("/public/x", ext={"route": "no-such-route"}))
    assert d.http_status == 403 and d.reason is Reason.NO_ROUTE


async def test_unmatched_allow_setting(tmp_path: Path) -> None:
    eng = Engine(Metrics(), snapshot(tmp_path, CONFIG.replace("unmatched: deny",
                                                              "unmatched: allow")))
    d = await eng.check(make_view("/elsewhere", headers={"x-auth-subject": "x"}))
    assert d.allowed and d.remove_headers == ("x-auth-subject",)


@pytest.mark.parametrize("path", ["/public/../v1/orders", "/public/%2e%2e/v1", "/public//x",
                                  "/public/%2Fetc", "/public/.", "/public\\x"])
async def test_path_traversal_to_bypass_prefix_refused(engine: Engine, path: str) -> None:
    d = await engine.check(make_view(path))
    assert d.http_status == 400 and d.grpc_code is GrpcCode.INVALID_ARGUMENT
    assert d.reason is Reason.BAD_REQUEST


async def test_not_ready_is_503() -> None:
    d = await Engine(Metrics()).check(make_view("/"))
    assert d.http_status == 503 and d.grpc_code is GrpcCode.UNAVAILABLE


async def test_unexpected_exception_fails_closed(engine: Engine) -> None:
    class Boom:
        kind = ApiKeyAuthenticator.kind
        name = "boom"

        async def authenticate(self, view: object) -> None:
            raise KeyError("internal detail that must not leak")

    route = engine.snapshot.routes.get("orders")  # type: ignore[union-attr]
    object.__setattr__(route, "authenticators", (Boom(),))
    d = await engine.check(make_view("/v1/orders"))
    assert d.http_status == 503 and d.grpc_code is GrpcCode.UNAVAILABLE
    assert d.reason is Reason.INTERNAL_ERROR
    assert "internal detail" not in d.body


def test_config_errors_collected_across_routes(tmp_path: Path) -> None:
    bad = CONFIG + """
- name: orders
  public: true
- name: other
  authn: [nope]
  authz: {consumers: [carol]}
- name: tmpl
  match: {template: "/a/{x}{y}"}
  public: true
"""
    with pytest.raises(ConfigError) as info:
        snapshot(tmp_path, bad)
    text = str(info.value)
    assert "routes[3].name: duplicate route 'orders'" in text
    assert "routes[4].authn[0]: unknown authenticator 'nope'" in text
    assert "routes[4].authz.consumers[0]: unknown consumer 'carol'" in text
    assert "routes[5].match.template" in text


ALL_OF = f"""
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [a]}}]
- name: bob
  keys: [{{id: b1, hash: "{hash_api_key(RO_KEY)}", scopes: [b]}}]
authenticators:
  header-key: {{api_key: {{sources: [{{header: x-api-key}}], consumers: [alice]}}}}
  query-key: {{api_key: {{sources: [{{query: k}}], consumers: [bob]}}}}
routes:
- name: both
  authn: [header-key, query-key]
  authn_mode: all_of
"""


async def test_all_of_requires_every_method(tmp_path: Path) -> None:
    eng = Engine(Metrics(), snapshot(tmp_path, ALL_OF))
    d = await eng.check(make_view("/x", headers={"x-api-key": KEY}, query={"k": RO_KEY}))
    assert d.allowed
    headers = dict(d.upstream_headers)
    assert headers["x-auth-subject"] == "alice"  # the first method is primary
    assert headers["x-auth-methods"] == "api_key,api_key"
    assert headers["x-auth-scopes"] == "a b"
    d = await eng.check(make_view("/x", headers={"x-api-key": KEY}))
    assert d.http_status == 401 and d.grpc_code is GrpcCode.UNAUTHENTICATED
    assert d.reason is Reason.MISSING_CREDENTIAL
    # one challenge per *missing* method
    assert [v for k, v in d.response_headers if k == "www-authenticate"] == [
        'ApiKey realm="extauthz", query="k"']


async def test_all_of_invalid_credential_denies_even_if_other_valid(tmp_path: Path) -> None:
    eng = Engine(Metrics(), snapshot(tmp_path, ALL_OF))
    d = await eng.check(make_view("/x", headers={"x-api-key": KEY}, query={"k": "eak_bad"}))
    assert d.http_status == 401 and d.reason is Reason.INVALID_API_KEY


async def test_client_sent_partial_body_header_not_forwarded(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders", headers={
        "x-api-key": KEY, "x-envoy-auth-partial-body": "true"}))
    assert d.allowed and "x-envoy-auth-partial-body" in d.remove_headers


# -- identity header hygiene (issue 12.2, 11.7) ------------------------------------------------

async def test_spoofed_identity_headers_removed_in_every_spelling(engine: Engine) -> None:
    spoofed = {"x_auth_subject": "m", "X_Auth_Consumer": "m", "x-auth.subject": "m",
               "x-auth_scopes": "m", "x-auth-admin": "m"}
    for path, headers in (("/public/x", spoofed), ("/v1/orders", {**spoofed, "x-api-key": KEY})):
        d = await engine.check(make_view(path, headers=headers))
        assert d.allowed, d
        # Envoy sends header names in lower case; those exact names are removed
        assert {n.lower() for n in spoofed} <= set(d.remove_headers), d.remove_headers


async def test_credential_header_spellings_removed(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders", headers={
        "x-api-key": KEY, "x_api_key": KEY, "x-api.key": KEY}))
    assert d.allowed
    assert {"x-api-key", "x_api_key", "x-api.key"} <= set(d.remove_headers)


async def test_every_configured_identity_header_is_reserved_on_every_route(tmp_path: Path) -> None:
    # the JWT authenticator's claims_to_headers name is on no route, yet removed on all
    text = CONFIG.replace("authenticators:\n", """authenticators:
  idp:
    jwt:
      issuer: https://idp.example
      audiences: [a]
      algorithms: [ES256]
      jwks: {inline: JWKS}
      claims_to_headers: {tenant: x-tenant-id}
""").replace("JWKS", json.dumps(jwks(ec_key())))
    registry = {**REGISTRY, "jwt": JwtAuthenticator.from_spec}
    path = tmp_path / "c.yaml"
    path.write_text(text)
    engine = Engine(Metrics(), compile_config(load_config(path), Metrics(), registry=registry))
    for view_path, extra in (("/public/x", {}), ("/v1/orders", {"x-api-key": KEY})):
        d = await engine.check(make_view(view_path, headers={
            **extra, "x-tenant-id": "m", "x_tenant_id": "m", "X-Tenant.Id": "m"}))
        assert d.allowed
        assert {"x-tenant-id", "x_tenant_id", "x-tenant.id"} <= set(d.remove_headers)


async def test_cookie_and_query_credentials_removed_under_every_encoding(engine: Engine) -> None:
    raw = f"page=2&api%5Fkey={KEY}&API.KEY=x"
    view = make_view("/v1/orders", headers={"cookie": f"a=1; k={KEY}, K=x; b=2"},
                     query=_parse_query(raw))
    view = dataclasses.replace(view, raw_query=raw)
    d = await engine.check(view)
    assert d.allowed
    assert set(d.remove_query) >= {"api%5Fkey", "api_key", "API.KEY"}
    assert dict(d.upstream_headers)["cookie"] == "a=1; b=2"


@pytest.mark.parametrize("method", list(AuthMethod))
@pytest.mark.parametrize("where", ["subject", "consumer", "header", "scope"])
@pytest.mark.parametrize("bad", ["a\r\nx-auth-admin: 1", "a\x00", "a\tb", "a\x85", "a\ud800"])
async def test_unrepresentable_identity_denies_for_every_method(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, method: AuthMethod, where: str, bad: str
) -> None:
    identity = Identity(
        method=method, authenticator="keys",
        subject=bad if where == "subject" else "alice",
        consumer=bad if where == "consumer" else "alice",
        scopes=frozenset({bad if where == "scope" else "orders:read"}),
        headers=(("x-auth-extra", bad if where == "header" else "ok"),))

    async def authenticate(self: object, view: object) -> Identity:
        return identity

    monkeypatch.setattr(ApiKeyAuthenticator, "authenticate", authenticate)
    d = await engine.check(make_view("/v1/orders", headers={"x-api-key": KEY}))
    assert not d.allowed
    assert (d.http_status, d.grpc_code, d.reason) == (
        403, GrpcCode.PERMISSION_DENIED, Reason.IDENTITY_NOT_REPRESENTABLE)
    assert json.loads(d.body)["reason"] == "identity_not_representable"
    assert bad not in d.body


async def test_utf8_identity_is_allowed(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    async def authenticate(self: object, view: object) -> Identity:
        return Identity(method=AuthMethod.API_KEY, subject="zoë", authenticator="keys")

    monkeypatch.setattr(ApiKeyAuthenticator, "authenticate", authenticate)
    d = await engine.check(make_view("/v1/orders", headers={"x-api-key": KEY}))
    assert d.allowed and dict(d.upstream_headers)["x-auth-subject"] == "zoë"


async def test_cookie_that_cannot_be_rewritten_is_refused(engine: Engine) -> None:
    d = await engine.check(make_view("/v1/orders", headers={
        "x-api-key": KEY, "cookie": f"k={KEY}; x=\udcff"}))
    assert (d.http_status, d.grpc_code, d.reason) == (
        400, GrpcCode.INVALID_ARGUMENT, Reason.BAD_REQUEST)
