"""The signed identity token in process: claims, signature, cache, rotation, header hygiene,
configuration errors, the admin JWKS/discovery documents and the CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from extauthz.admin import make_admin_app
from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.cli import main
from extauthz.clock import FixedClock
from extauthz.decision import Decision, GrpcCode, Outcome
from extauthz.errors import ConfigError
from extauthz.idtoken.keys import generate_pem, parse_private_key, thumbprint
from extauthz.keys import hash_api_key
from extauthz.metrics import Metrics
from extauthz.pipeline import Engine
from extauthz.snapshot import Snapshot
from extauthz.types import AuthMethod, Identity
from tests.support.builders import make_view
from tests.support.configs import compile_text

KEY = "eak_idtoken-test-key-0123456789ab"
OTHER = "eak_idtoken-other-key-0123456789a"
REGISTRY = {"api_key": ApiKeyAuthenticator.from_spec}
NOW = 1_800_000_000.0
HEADER = "x-auth-identity-token"
ISSUER = "https://extauthz.test"


def config(keys: str, *, settings_extra: str = "", routes: str | None = None) -> str:
    return f"""
settings:
  identity_token:
    issuer: {ISSUER}
    ttl_seconds: 120
    keys: {keys}
{settings_extra}
authenticators:
  keys:
    api_key: {{sources: [{{header: x-api-key}}]}}
consumers:
- name: alice
  keys: [{{id: k1, hash: "{hash_api_key(KEY)}", scopes: [orders:read, orders:write]}}]
- name: bob
  keys: [{{id: b1, hash: "{hash_api_key(OTHER)}"}}]
routes:
{routes if routes is not None else '''
- name: public
  match: {prefix: /public/}
  public: true
- name: orders
  match: {prefix: /v1/orders}
  authn: [keys]
  identity_token: true
- name: billing
  match: {prefix: /v1/billing}
  authn: [keys]
  identity_token: {audience: https://billing.internal}
- name: plain
  match: {prefix: /v1/}
  authn: [keys]
'''}
"""


def write_key(tmp_path: Path, name: str, alg: str = "ES256") -> str:
    path = tmp_path / name
    path.write_bytes(generate_pem(alg))  # type: ignore[arg-type]
    return name


def build(tmp_path: Path, text: str, clock: FixedClock | None = None) -> Snapshot:
    return compile_text(tmp_path, text, registry=REGISTRY, clock=clock or FixedClock(NOW))


def verify(token: str, snapshot: Snapshot, audience: str, now: float = NOW) -> dict[str, Any]:
    tokens = snapshot.identity_tokens
    assert tokens is not None
    keyset = jwt.PyJWKSet.from_dict(tokens.jwks())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256", "EdDSA"], audience=audience, issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False})
    assert claims["iat"] <= now < claims["exp"]
    return claims


async def allowed(engine: Engine, path: str, key: str = KEY, **headers: str) -> Decision:
    d = await engine.check(make_view(path, headers={"x-api-key": key, **headers}))
    assert d.outcome is Outcome.ALLOW and d.grpc_code is GrpcCode.OK, d
    return d


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def snap(tmp_path: Path, clock: FixedClock) -> Snapshot:
    return build(tmp_path, config(f"[{{file: {write_key(tmp_path, 'k.pem')}}}]"), clock)


async def test_token_claims_verify_against_the_published_jwks(snap: Snapshot) -> None:
    d = await allowed(Engine(Metrics(), snap), "/v1/orders/7")
    token = dict(d.upstream_headers)[HEADER]
    claims = verify(token, snap, "orders")
    assert claims["sub"] == "alice" and claims["consumer"] == "alice"
    assert claims["methods"] == ["api_key"]
    assert claims["scope"] == "orders:read orders:write"
    assert claims["exp"] - claims["iat"] == 120
    assert len(claims["jti"]) >= 20
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert HEADER not in d.remove_headers  # set (overwrite), not removed


async def test_configured_audience_and_eddsa(tmp_path: Path) -> None:
    snap = build(tmp_path, config(f"[{{file: {write_key(tmp_path, 'ed.pem', 'EdDSA')}}}]"))
    d = await allowed(Engine(Metrics(), snap), "/v1/billing")
    token = dict(d.upstream_headers)[HEADER]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert verify(token, snap, "https://billing.internal")["sub"] == "alice"
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, snap, "billing")


async def test_client_sent_token_is_overwritten_or_removed_never_forwarded(
    snap: Snapshot,
) -> None:
    engine = Engine(Metrics(), snap)
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
    minted = await allowed(engine, "/v1/orders", **{HEADER: forged})
    assert dict(minted.upstream_headers)[HEADER] != forged
    # a route that mints nothing still removes the client's copy ...
    plain = await allowed(engine, "/v1/other", **{HEADER: forged})
    assert HEADER in plain.remove_headers and HEADER not in dict(plain.upstream_headers)
    # ... and so does a public route
    public = await engine.check(make_view("/public/x", headers={HEADER: forged}))
    assert public.outcome is Outcome.ALLOW and HEADER in public.remove_headers


async def test_a_header_outside_the_identity_namespace_is_removed_too(tmp_path: Path) -> None:
    snap = build(tmp_path, config(f"[{{file: {write_key(tmp_path, 'k.pem')}}}]",
                                  settings_extra="    header: X-Upstream-Identity"))
    d = await allowed(Engine(Metrics(), snap), "/v1/other", **{"x-upstream-identity": "forged"})
    assert "x-upstream-identity" in d.remove_headers


async def test_cached_until_half_its_lifetime_then_minted_again(
    snap: Snapshot, clock: FixedClock
) -> None:
    engine = Engine(Metrics(), snap)
    tokens = snap.identity_tokens
    assert tokens is not None
    first = dict((await allowed(engine, "/v1/orders")).upstream_headers)[HEADER]
    clock.advance(59)
    again = dict((await allowed(engine, "/v1/orders")).upstream_headers)[HEADER]
    assert again == first and tokens.minted == 1  # no second signature
    other_aud = dict((await allowed(engine, "/v1/billing")).upstream_headers)[HEADER]
    other_id = dict((await allowed(engine, "/v1/orders", key=OTHER)).upstream_headers)[HEADER]
    assert len({first, other_aud, other_id}) == 3 and tokens.minted == 3
    assert verify(other_id, snap, "orders", clock.now)["sub"] == "bob"
    clock.advance(2)  # 61 s: less than half of the 120 s lifetime is left
    fresh = dict((await allowed(engine, "/v1/orders")).upstream_headers)[HEADER]
    assert fresh != first and tokens.minted == 4
    assert tokens._hit._value.get() == 1 and tokens._miss._value.get() == 4
    assert verify(fresh, snap, "orders", clock.now)["iat"] == int(clock.now)


def test_the_token_never_outlives_the_credential(snap: Snapshot) -> None:
    tokens = snap.identity_tokens
    assert tokens is not None
    policy = tokens.routes["orders"]
    identity = Identity(AuthMethod.JWT, "carol", "idp", expires_at=NOW + 30)
    first = tokens.token(policy, identity)
    assert jwt.decode(first, options={"verify_signature": False})["exp"] == int(NOW + 30)
    # the same subject with a credential expiring sooner must not get the cached token
    sooner = Identity(AuthMethod.JWT, "carol", "idp", expires_at=NOW + 10)
    second = tokens.token(policy, sooner)
    assert jwt.decode(second, options={"verify_signature": False})["exp"] == int(NOW + 10)


def test_selected_claims_are_copied_and_reserved_ones_refused(tmp_path: Path) -> None:
    snap = build(tmp_path, config(f"[{{file: {write_key(tmp_path, 'k.pem')}}}]",
                                  settings_extra="    claims: [email, groups]"))
    tokens = snap.identity_tokens
    assert tokens is not None
    identity = Identity(AuthMethod.JWT, "carol", "idp",
                        claims={"email": "c@example.com", "groups": ["a", "b"], "secret": "x"})
    token = tokens.token(tokens.routes["orders"], identity)
    claims = verify(token, snap, "orders")
    assert claims["email"] == "c@example.com" and claims["groups"] == ["a", "b"]
    assert "secret" not in claims
    big = Identity(AuthMethod.JWT, "dave", "idp", claims={"email": "x" * 5000, "groups": []})
    assert "email" not in verify(tokens.token(tokens.routes["orders"], big), snap, "orders")
    with pytest.raises(ConfigError) as err:
        build(tmp_path, config("[{file: k.pem}]", settings_extra="    claims: [sub, email]"))
    assert "settings.identity_token.claims" in str(err.value) and "sub" in str(err.value)


async def test_rotation_signs_with_the_first_key_and_publishes_both(tmp_path: Path) -> None:
    old_name, new_name = write_key(tmp_path, "old.pem"), write_key(tmp_path, "new.pem", "EdDSA")
    before = build(tmp_path, config(f"[{{file: {old_name}}}]"))
    old_token = dict((await allowed(Engine(Metrics(), before), "/v1/orders"))
                     .upstream_headers)[HEADER]
    during = build(tmp_path, config(f"[{{file: {new_name}}}, {{file: {old_name}}}]"))
    new_token = dict((await allowed(Engine(Metrics(), during), "/v1/orders"))
                     .upstream_headers)[HEADER]
    assert during.identity_tokens is not None
    kids = [k["kid"] for k in during.identity_tokens.jwks()["keys"]]
    assert jwt.get_unverified_header(new_token)["kid"] == kids[0]
    assert jwt.get_unverified_header(old_token)["kid"] == kids[1]
    verify(old_token, during, "orders")  # the grace period: both verify
    verify(new_token, during, "orders")
    after = build(tmp_path, config(f"[{{file: {new_name}}}]"))
    with pytest.raises(StopIteration):  # the old kid is no longer published
        verify(old_token, after, "orders")
    # the key files are watched: replacing a Secret's file reloads the keys
    assert tmp_path / new_name in after.files


def test_jwks_has_no_private_member_and_kid_is_the_thumbprint(snap: Snapshot) -> None:
    assert snap.identity_tokens is not None
    (jwk,) = snap.identity_tokens.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert jwk["kid"] == thumbprint(jwk)


@pytest.mark.parametrize(("text", "where", "message"), [
    ("routes:\n- {name: r, match: {prefix: /}, authn: [{api_key: {sources: [{header: k}]}}], "
     "identity_token: true}", "routes[0].identity_token", "needs settings.identity_token"),
])
def test_route_token_without_settings_is_a_located_error(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        compile_text(tmp_path, text, registry=REGISTRY)
    assert f"{where}: {message}" in str(err.value)


def test_configuration_errors_are_located(tmp_path: Path) -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "rsa.pem").write_bytes(rsa_pem)
    cases = [
        (config("[{file: rsa.pem}]"), "settings.identity_token.keys[0]", "not an EC P-256"),
        (config("[{file: missing.pem}]"), "settings.identity_token.keys[0]", "cannot read"),
        (config("[{env: EXTAUTHZ_TEST_UNSET_KEY}]"), "settings.identity_token.keys[0]",
         "not set"),
        (config("[{pem: abc}]"), "settings.identity_token.keys[0]", "inline keys are refused"),
        (config("[{file: k.pem}]", settings_extra="    ttl_seconds: 301"),
         "settings.identity_token.ttl_seconds", "less than or equal to 300"),
        (config("[{file: k.pem}]", settings_extra="    header: authorization"),
         "settings.identity_token.header", "cannot carry"),
        (config("[{file: k.pem}]", settings_extra="    header: x-auth-subject"),
         "settings.identity_token.header", "identity header extauthz sets itself"),
        (config("[{file: k.pem}]", routes="- {name: p, match: {prefix: /}, public: true, "
                                          "identity_token: true}"),
         "routes[0].identity_token", "public route"),
    ]
    write_key(tmp_path, "k.pem")
    for text, where, message in cases:
        with pytest.raises(ConfigError) as err:
            build(tmp_path, text)
        assert any(i.path == where and message in i.message for i in err.value.issues), (
            where, [str(i) for i in err.value.issues])


def test_key_from_an_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = generate_pem("ES256")
    monkeypatch.setenv("EXTAUTHZ_TEST_IDTOKEN_KEY", pem.decode())
    snap = build(tmp_path, config("[{env: EXTAUTHZ_TEST_IDTOKEN_KEY}]"))
    assert snap.identity_tokens is not None
    assert snap.identity_tokens.signing.kid == parse_private_key(pem).kid


async def test_admin_serves_jwks_and_discovery_and_404_when_off(snap: Snapshot) -> None:
    current: list[Snapshot | None] = [snap]

    def tokens() -> Any:
        s = current[0]
        return s.identity_tokens if s is not None else None

    async with TestClient(TestServer(make_admin_app(Metrics(), lambda: True, tokens))) as client:
        r = await client.get("/.well-known/jwks.json")
        assert r.status == 200 and r.content_type == "application/jwk-set+json"
        assert snap.identity_tokens is not None
        assert await r.json() == snap.identity_tokens.jwks()
        r = await client.get("/.well-known/openid-configuration")
        meta = await r.json()
        assert meta["issuer"] == ISSUER
        assert meta["jwks_uri"].endswith("/.well-known/jwks.json")
        assert meta["id_token_signing_alg_values_supported"] == ["ES256"]
        current[0] = None
        assert (await client.get("/.well-known/jwks.json")).status == 404
        assert (await client.get("/.well-known/openid-configuration")).status == 404


def test_cli_generates_a_0600_key_and_exports_the_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "new.pem"
    assert main(["identity-token", "generate-key", "--alg", "EdDSA", "--out", str(key)]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert main(["identity-token", "generate-key", "--out", str(key)]) == 1  # never overwrites
    (tmp_path / "c.yaml").write_text(config("[{file: new.pem}]"))
    capsys.readouterr()
    assert main(["identity-token", "jwks", "--config", str(tmp_path / "c.yaml")]) == 0
    (jwk,) = json.loads(capsys.readouterr().out)["keys"]
    assert jwk["kty"] == "OKP" and jwk["kid"] == parse_private_key(key.read_bytes()).kid
    assert "d" not in jwk


async def test_a_client_sent_token_is_removed_in_every_spelling(tmp_path: Path) -> None:
    snap = build(tmp_path, config(f"[{{file: {write_key(tmp_path, 'k.pem')}}}]",
                                  settings_extra="    header: X-Upstream-Identity"))
    spellings = ("x_upstream_identity", "x-upstream.identity", "x.upstream_identity")
    d = await allowed(Engine(Metrics(), snap), "/v1/other", **dict.fromkeys(spellings, "forged"))
    assert set(spellings) <= set(d.remove_headers)
