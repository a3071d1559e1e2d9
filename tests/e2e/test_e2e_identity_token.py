"""The signed identity token through a real Envoy, on both transports, verified by a real upstream.

client -> Envoy -> extauthz (mints the token) -> Envoy -> the verifying upstream
(:mod:`tests.support.verifier`: PyJWT against the JWKS that extauthz's admin port publishes, found
through its discovery document). The upstream accepts the token extauthz minted, and rejects a
forged one, a client-sent one (Envoy never forwards it), an unsigned one, and — after a key
rotation's grace period ends — a token signed with the retired key, replayed straight at the
upstream (the "reached by another route" case the token exists for).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from extauthz.demo.background import BackgroundApp
from extauthz.demo.httpclient import Response, request
from extauthz.idtoken.keys import generate_pem, parse_private_key
from extauthz.keys import hash_api_key
from tests.e2e.helpers import assert_denied
from tests.support.processes import Stack
from tests.support.tokens import b64url
from tests.support.transports import TRANSPORTS, start_transport_stack
from tests.support.verifier import TOKEN_HEADER, Verifier, start_verifier

ISSUER = "https://extauthz.e2e.test"
KEY = "eak_identity-token-e2e-key-01234567"
PATH = "/reports/q1"
AUDIENCE = "reports-service"


def write_config(path: Path, key_files: list[str]) -> None:
    keys = ", ".join(f"{{file: {name}}}" for name in key_files)
    path.write_text(f"""
settings:
  identity_token:
    issuer: {ISSUER}
    ttl_seconds: 300
    keys: [{keys}]
authenticators:
  keys:
    api_key: {{sources: [{{header: x-api-key}}]}}
consumers:
- name: reporting-app
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [reports:read]}}]
routes:
- name: reports
  match: {{prefix: /reports/}}
  authn: [keys]
  identity_token: {{audience: {AUDIENCE}}}
- name: profile
  match: {{prefix: /profile/}}
  authn: [keys]
""")


@pytest.fixture(scope="module", params=TRANSPORTS)
def world(request: pytest.FixtureRequest, e2e_dir: Path) -> Iterator[dict[str, Any]]:
    transport: str = request.param
    base = e2e_dir / transport
    base.mkdir()
    for name in ("a.pem", "b.pem"):
        (base / name).write_bytes(generate_pem("ES256" if name == "a.pem" else "EdDSA"))
    config = base / "extauthz.yaml"
    write_config(config, ["a.pem"])
    verifier = Verifier("unset", ISSUER, AUDIENCE)
    upstream: BackgroundApp = start_verifier(verifier)
    try:
        stack = start_transport_stack(transport, config, upstream_port=upstream.port,
                                      log_dir=base / "logs")
    except BaseException:
        upstream.close()
        raise
    verifier.discovery_url = stack.extauthz_url + "/.well-known/openid-configuration"
    try:
        yield {"stack": stack, "upstream": upstream, "config": config, "dir": base,
               "kid_a": parse_private_key((base / "a.pem").read_bytes()).kid,
               "kid_b": parse_private_key((base / "b.pem").read_bytes()).kid}
    finally:
        stack.stop()
        upstream.close()


def direct(upstream: BackgroundApp, token: str) -> Response:
    """A request that reaches the upstream without Envoy, carrying ``token``."""
    return request("GET", upstream.base_url + PATH, {TOKEN_HEADER: token})


def published_kids(stack: Stack) -> list[str]:
    return [k["kid"] for k in request("GET", stack.extauthz_url
                                      + "/.well-known/jwks.json").json()["keys"]]


def wait_for_kids(stack: Stack, kids: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while published_kids(stack) != kids:
        assert time.monotonic() < deadline, f"JWKS still {published_kids(stack)}, want {kids}"
        time.sleep(0.2)


def forged(kid: str, claims: dict[str, Any], alg: str = "ES256") -> str:
    """A well-formed token signed with an attacker's key under extauthz's ``kid``."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_upstream_verifies_the_minted_token_and_never_sees_the_key(world: dict[str, Any]) -> None:
    stack: Stack = world["stack"]
    r = stack.get(PATH, {"x-api-key": KEY, TOKEN_HEADER: "client-sent.forged.token"})
    assert r.status == 200, r.text
    body = r.json()
    assert body["upstream"] == "verifier"
    claims = body["claims"]
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["sub"] == "reporting-app" and claims["consumer"] == "reporting-app"
    assert claims["methods"] == ["api_key"] and claims["scope"] == "reports:read"
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert jwt.get_unverified_header(body["headers"][TOKEN_HEADER])["kid"] == world["kid_a"]
    assert "x-api-key" not in body["headers"]  # credentials still stripped
    world["token_a"] = body["headers"][TOKEN_HEADER]


def test_a_route_that_mints_nothing_still_removes_a_client_sent_token(
    world: dict[str, Any],
) -> None:
    stack: Stack = world["stack"]
    # even a genuine token, replayed by a client, must not reach the upstream through Envoy
    r = stack.get("/profile/me", {"x-api-key": KEY, TOKEN_HEADER: world["token_a"]})
    assert r.status == 401 and r.json() == {"upstream": "verifier", "error": "no token"}


def test_a_denied_request_gets_no_token_and_never_reaches_the_upstream(
    world: dict[str, Any],
) -> None:
    stack: Stack = world["stack"]
    assert_denied(stack.get(PATH, {TOKEN_HEADER: world["token_a"]}), 401, "missing_credential")
    assert_denied(stack.get(PATH, {"x-api-key": "eak_wrong-key-000000000000000000"}),
                  401, "invalid_api_key")


def test_forged_and_unsigned_tokens_are_rejected_by_the_upstream(world: dict[str, Any]) -> None:
    upstream: BackgroundApp = world["upstream"]
    good = jwt.decode(world["token_a"], options={"verify_signature": False})
    assert direct(upstream, world["token_a"]).status == 200  # the real one, replayed: valid
    bad = direct(upstream, forged(world["kid_a"], {**good, "sub": "admin"}))
    assert bad.status == 401 and bad.json()["error"] == "InvalidSignatureError"
    header = b64url(b'{"alg":"none","kid":"' + world["kid_a"].encode() + b'"}')
    admin = b64url(b'{"sub":"admin"}')
    unsigned = f"{header}.{admin}."
    assert direct(upstream, unsigned).status == 401
    parts = world["token_a"].split(".")
    tampered = ".".join([parts[0], admin, parts[2]])
    assert direct(upstream, tampered).status == 401


def test_rotation_new_key_signs_old_token_valid_in_grace_rejected_after(
    world: dict[str, Any],
) -> None:
    stack: Stack = world["stack"]
    upstream: BackgroundApp = world["upstream"]
    config: Path = world["config"]
    # rotation starts: the new key first (signs), the old one still published
    write_config(config, ["b.pem", "a.pem"])
    wait_for_kids(stack, [world["kid_b"], world["kid_a"]])
    r = stack.get(PATH, {"x-api-key": KEY})
    assert r.status == 200, r.text
    token_b = r.json()["headers"][TOKEN_HEADER]
    assert jwt.get_unverified_header(token_b)["kid"] == world["kid_b"]
    assert jwt.get_unverified_header(token_b)["alg"] == "EdDSA"
    assert direct(upstream, world["token_a"]).status == 200  # grace: the old key still verifies
    # grace over: the old key is withdrawn
    write_config(config, ["b.pem"])
    wait_for_kids(stack, [world["kid_b"]])
    stale = direct(upstream, world["token_a"])
    assert stale.status == 401 and stale.json()["error"] == "PyJWKClientError"  # unknown kid
    assert direct(upstream, token_b).status == 200
    assert stack.get(PATH, {"x-api-key": KEY}).status == 200
