"""Bearer JWT authentication: algorithms, keys, claims, identity, sources, challenge, cache.

JWKS fetching (url / discovery, refresh, staleness, refetch) lives in test_jwks.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.authn.base import Authenticator
from extauthz.authn.jwt import MAX_TOKEN_LENGTH, JwtAuthenticator, render_claim
from extauthz.clock import FixedClock
from extauthz.config.schema import JwtSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import AuthenticationError, CheckError, Reason
from extauthz.metrics import Metrics
from extauthz.types import AuthMethod, Identity
from tests.support.builders import NOW, make_ctx, make_view
from tests.support.tokens import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    b64url,
    bearer,
    claims,
    ec_key,
    ed448_key,
    ed25519_key,
    hmac_token,
    jwks,
    mint,
    rsa_key,
    tamper,
    unsigned,
)

ALL_ALGS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]


def spec(keys: list[Any] | None = None, **overrides: Any) -> JwtSpec:
    data: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256"],
        "jwks": {"inline": jwks(*(keys if keys is not None else [rsa_key()]))},
        "leeway_seconds": 30,
    }
    data.update(overrides)
    return JwtSpec.model_validate(data)


def build(
    keys: list[Any] | None = None,
    *,
    clock: FixedClock | None = None,
    metrics: Metrics | None = None,
    name: str = "idp",
    **overrides: Any,
) -> JwtAuthenticator:
    ctx = make_ctx(clock=clock or FixedClock(NOW), metrics=metrics)
    return JwtAuthenticator.from_spec(name, spec(keys, **overrides), ctx)


async def auth(authn: JwtAuthenticator, token: str) -> Identity:
    identity = await authn.authenticate(make_view(headers=bearer(token)))
    assert identity is not None
    return identity


async def denied(
    call: Awaitable[Any],
    reason: Reason,
    *,
    http: int = 401,
    grpc: GrpcCode = GrpcCode.UNAUTHENTICATED,
) -> CheckError:
    """Await ``call``, expect it to raise with ``reason``; check the HTTP and gRPC status too."""
    with pytest.raises(CheckError) as info:
        await call
    err = info.value
    assert err.reason is reason, f"{err.reason} ({err.detail})"
    decision = from_error(err, "r")
    assert decision.http_status == http
    assert decision.grpc_code is grpc
    return err


async def rejects(authn: JwtAuthenticator, token: str, reason: Reason) -> AuthenticationError:
    err = await denied(authn.authenticate(make_view(headers=bearer(token))), reason)
    assert isinstance(err, AuthenticationError)
    assert err.authenticator == authn.name
    return err


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------------ algorithms


def key_for(alg: str) -> SigningKey:
    if alg.startswith(("RS", "PS")):
        return rsa_key(f"k-{alg}", alg)
    if alg.startswith("ES"):
        return ec_key(f"k-{alg}", alg)
    return ed25519_key("k-ed25519")


@pytest.mark.parametrize("alg", ALL_ALGS)
async def test_each_pinned_algorithm_verifies(alg: str) -> None:
    key = key_for(alg)
    authn = build([key], algorithms=[alg])
    identity = await auth(authn, mint(key, claims(now=NOW)))
    assert identity.subject == "user-1"
    assert identity.key_id == key.kid


async def test_ed448_verifies_under_eddsa() -> None:
    key = ed448_key()
    authn = build([key], algorithms=["EdDSA"])
    assert (await auth(authn, mint(key, claims(now=NOW)))).subject == "user-1"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_unsigned_token_refused(alg: str) -> None:
    authn = build()
    token = unsigned({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, claims(now=NOW))
    await rejects(authn, token, Reason.DISALLOWED_ALGORITHM)


async def test_alg_none_with_a_valid_signature_attached_refused() -> None:
    key = rsa_key()
    good = mint(key, claims(now=NOW))
    forged = mint(key, claims(now=NOW), headers={"alg": "none"}, sign_alg="RS256")
    assert good.split(".")[2] != ""
    await rejects(build([key]), forged, Reason.DISALLOWED_ALGORITHM)


async def test_key_confusion_hs256_signed_with_rsa_public_key_pem_refused() -> None:
    """The classic attack: the verifier's RSA public key used as an HMAC secret."""
    key = rsa_key()
    authn = build([key], algorithms=["RS256", "PS256", "ES256", "EdDSA"])
    for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode()):
        for alg in ("HS256", "HS384", "HS512"):
            token = hmac_token(secret, claims(now=NOW), alg=alg, kid=key.kid)
            await rejects(authn, token, Reason.DISALLOWED_ALGORITHM)


async def test_algorithm_not_pinned_refused_even_if_key_would_verify() -> None:
    key = rsa_key("k1", "RS256")
    authn = build([key.public_jwk(alg=False)], algorithms=["RS256"])
    # PS256 with the very same RSA key is a valid signature, but the issuer pins RS256 only.
    token = mint(key, claims(now=NOW), alg="PS256")
    await rejects(authn, token, Reason.DISALLOWED_ALGORITHM)
    assert (await auth(authn, mint(key, claims(now=NOW)))).subject == "user-1"


@pytest.mark.parametrize("bad_alg", [None, 256, ["RS256"], "rs256", "RS256 "])
async def test_alg_header_must_be_an_exact_pinned_string(bad_alg: Any) -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW), headers={"alg": bad_alg}, sign_alg="RS256")
    await rejects(build([key]), token, Reason.DISALLOWED_ALGORITHM)


async def test_rsa_key_never_verifies_an_es256_token() -> None:
    """kty must match the alg family: a kid naming an RSA key cannot be used for ES256."""
    rsa = rsa_key("shared", "RS256")
    ecdsa = ec_key("shared-ec", "ES256")
    authn = build([rsa], algorithms=["RS256", "ES256"])
    # An ES256 token (really signed by an EC key) pointing at the RSA key's kid.
    token = mint(ecdsa, claims(now=NOW), kid="shared")
    await rejects(authn, token, Reason.UNKNOWN_KEY)
    # The header says ES256 but the signature is RS256 by the RSA key itself.
    token = mint(rsa, claims(now=NOW), alg="ES256", sign_alg="RS256")
    await rejects(authn, token, Reason.UNKNOWN_KEY)


async def test_ec_key_on_another_curve_never_verifies() -> None:
    p384 = ec_key("p384", "ES384")
    authn = build([p384], algorithms=["ES256", "ES384"])
    # ES256 header naming a P-384 key.
    token = mint(p384, claims(now=NOW), alg="ES256", sign_alg="ES384")
    await rejects(authn, token, Reason.UNKNOWN_KEY)


async def test_jwk_alg_restricts_the_key() -> None:
    key = rsa_key("k1", "RS256")
    authn = build([key], algorithms=["RS256", "PS256"])  # JWK says alg RS256
    await rejects(authn, mint(key, claims(now=NOW), alg="PS256"), Reason.UNKNOWN_KEY)


# ------------------------------------------------------------------------------ signature / format


async def test_bad_signature_from_another_key_with_the_same_kid() -> None:
    good = rsa_key("k1")
    impostor = rsa_key("impostor")
    token = mint(impostor, claims(now=NOW), kid="k1")
    await rejects(build([good]), token, Reason.BAD_SIGNATURE)


@pytest.mark.parametrize("alg", ALL_ALGS)
async def test_tampered_payload_refused(alg: str) -> None:
    key = key_for(alg)
    authn = build([key], algorithms=[alg])
    token = mint(key, claims(now=NOW))
    await rejects(authn, tamper(token, sub="admin"), Reason.BAD_SIGNATURE)
    await rejects(authn, tamper(token, exp=int(NOW + 10**6)), Reason.BAD_SIGNATURE)


async def test_tampered_header_refused() -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW))
    other_header = mint(key, claims(now=NOW), headers={"typ": "at+jwt"}).split(".")[0]
    forged = ".".join([other_header, *token.split(".")[1:]])
    await rejects(build([key]), forged, Reason.BAD_SIGNATURE)


async def test_truncated_and_wrong_length_signatures_refused() -> None:
    rsa = rsa_key()
    token = mint(rsa, claims(now=NOW))
    h, p, s = token.split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    await rejects(build([rsa]), f"{h}.{p}.{b64url(raw[:-1])}", Reason.BAD_SIGNATURE)
    await rejects(build([rsa]), f"{h}.{p}.{b64url(raw + b'0')}", Reason.BAD_SIGNATURE)
    await rejects(build([rsa]), f"{h}.{p}.", Reason.BAD_SIGNATURE)
    ecdsa = ec_key()
    authn = build([ecdsa], algorithms=["ES256"])
    token = mint(ecdsa, claims(now=NOW))
    h, p, _ = token.split(".")
    # DER-encoded or zero signatures are not JWS ECDSA signatures.
    await rejects(authn, f"{h}.{p}.{b64url(bytes(64))}", Reason.BAD_SIGNATURE)
    await rejects(authn, f"{h}.{p}.{b64url(bytes(70))}", Reason.BAD_SIGNATURE)
    # Malleability: the same (r, s) with s zero-padded to 33 bytes must not verify.
    sig = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    assert len(sig) == 64
    await rejects(authn, f"{h}.{p}.{b64url(sig[:32] + bytes(1) + sig[32:])}", Reason.BAD_SIGNATURE)
    await auth(authn, token)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",  # JWE
        "!!!.e30.e30",
        "e30=.e30.e30",  # padding is not base64url
        "eyJhbGciOiJSUzI1NiJ9 .e30.AA",
        "bm90IGpzb24.e30.AA",  # header is not JSON
        "WzFd.e30.AA",  # header is an array
    ],
)
async def test_garbled_tokens_are_malformed(token: str) -> None:
    await rejects(build(), token, Reason.MALFORMED_TOKEN)


async def test_non_canonical_base64_refused() -> None:
    key = rsa_key()
    h, p, s = mint(key, claims(now=NOW)).split(".")
    # RSA-2048 signatures are 256 bytes: 342 base64url chars, 4 unused trailing bits.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(s[-1])
    variant = s[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    assert variant != s
    await rejects(build([key]), f"{h}.{p}.{variant}", Reason.MALFORMED_TOKEN)


async def test_header_rules() -> None:
    key = rsa_key()
    authn = build([key])
    for headers in ({"crit": ["exp"]}, {"b64": False, "crit": ["b64"]}, {"kid": 7}):
        token = mint(key, claims(now=NOW), headers=headers)
        await rejects(authn, token, Reason.MALFORMED_TOKEN)


async def test_duplicate_json_members_refused() -> None:
    key = rsa_key()
    payload = json.dumps(claims(now=NOW))[:-1] + ',"sub":"admin"}'
    token = mint(key, payload.encode())
    await rejects(build([key]), token, Reason.MALFORMED_TOKEN)


async def test_oversized_token_refused_before_parsing() -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW, pad="x" * MAX_TOKEN_LENGTH))
    await rejects(build([key]), token, Reason.MALFORMED_TOKEN)


@pytest.mark.parametrize("payload", [b"[1]", b"not json", b'{"exp": NaN}', b'"s"'])
async def test_signed_but_malformed_payload(payload: bytes) -> None:
    key = rsa_key()
    await rejects(build([key]), mint(key, payload), Reason.MALFORMED_TOKEN)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    key = ec_key()
    authn = build([key], algorithms=["ES256"], cache_size=0)
    token = mint(key, claims(now=NOW))
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.= ")
    )
    mutated = token[:index] + replacement + token[index + 1 :]
    if mutated == token:
        return
    with pytest.raises(AuthenticationError):
        await authn.authenticate(make_view(headers=bearer(mutated)))


# ----------------------------------------------------------------------------------- key selection


async def test_no_kid_with_a_single_candidate_key_is_used() -> None:
    key = rsa_key("only")
    identity = await auth(build([key]), mint(key, claims(now=NOW), kid=None))
    assert identity.key_id == "only"


async def test_no_kid_with_several_candidates_is_refused() -> None:
    a, b = rsa_key("a"), rsa_key("b")
    err = await rejects(build([a, b]), mint(a, claims(now=NOW), kid=None), Reason.UNKNOWN_KEY)
    assert err.description == "token has no key id"


async def test_no_kid_counts_only_keys_usable_for_the_alg() -> None:
    r, e = rsa_key("r"), ec_key("e")
    authn = build([r, e], algorithms=["RS256", "ES256"])
    assert (await auth(authn, mint(e, claims(now=NOW), kid=None))).key_id == "e"
    assert (await auth(authn, mint(r, claims(now=NOW), kid=None))).key_id == "r"


async def test_unknown_kid_with_static_keys() -> None:
    key = rsa_key("k1")
    token = mint(rsa_key("k2"), claims(now=NOW))
    await rejects(build([key]), token, Reason.UNKNOWN_KEY)


async def test_malformed_key_next_to_good_ones() -> None:
    good = rsa_key("good")
    ecdsa = ec_key("good-ec")
    broken = [
        {"kty": "RSA", "kid": "bad-n", "n": "!!!", "e": "AQAB"},
        {
            "kty": "EC",
            "kid": "bad-point",
            "crv": "P-256",
            "x": b64url(bytes(32)),
            "y": b64url(bytes(32)),
        },
        {"kty": "oct", "kid": "hmac", "k": b64url(b"secret")},
        rsa_key("enc").public_jwk(use="enc"),
        "not an object",
    ]
    authn = build([*broken, good, ecdsa], algorithms=["RS256", "ES256"])
    assert (await auth(authn, mint(good, claims(now=NOW)))).key_id == "good"
    assert (await auth(authn, mint(ecdsa, claims(now=NOW)))).key_id == "good-ec"
    for kid in ("bad-n", "bad-point", "hmac", "enc"):
        await rejects(authn, mint(good, claims(now=NOW), kid=kid), Reason.UNKNOWN_KEY)


# ------------------------------------------------------------------------------------------ claims


async def test_expired() -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW - 3600, ttl=600))
    err = await rejects(build([key]), token, Reason.TOKEN_EXPIRED)
    assert err.description == "token expired"


async def test_not_yet_valid() -> None:
    key = rsa_key()
    await rejects(
        build([key]), mint(key, claims(now=NOW, nbf=int(NOW + 120))), Reason.TOKEN_NOT_YET_VALID
    )


async def test_issued_in_future() -> None:
    key = rsa_key()
    await rejects(
        build([key]), mint(key, claims(now=NOW, iat=int(NOW + 120))), Reason.TOKEN_ISSUED_IN_FUTURE
    )


async def test_leeway_edges() -> None:
    key = rsa_key()
    clock = FixedClock(NOW)
    authn = build([key], clock=clock, leeway_seconds=30, cache_size=0)

    def tok(**c: Any) -> str:
        return mint(key, claims(now=NOW, **c))

    # exp: valid while now < exp + leeway
    await auth(authn, tok(exp=int(NOW - 29)))
    await rejects(authn, tok(exp=int(NOW - 30)), Reason.TOKEN_EXPIRED)
    # nbf: valid from nbf - leeway
    await auth(authn, tok(nbf=int(NOW + 30)))
    await rejects(authn, tok(nbf=int(NOW + 31)), Reason.TOKEN_NOT_YET_VALID)
    # iat: not after now + leeway
    await auth(authn, tok(iat=int(NOW + 30)))
    await rejects(authn, tok(iat=int(NOW + 31)), Reason.TOKEN_ISSUED_IN_FUTURE)
    # zero leeway is exact
    strict = build([key], clock=clock, leeway_seconds=0, cache_size=0)
    await auth(strict, tok(exp=int(NOW + 1)))
    await rejects(strict, tok(exp=int(NOW)), Reason.TOKEN_EXPIRED)


async def test_time_checks_use_the_injected_clock_not_the_real_one() -> None:
    key = rsa_key()
    for when in (1_000_000_000.0, 4_000_000_000.0):  # 2001 and 2096
        authn = build([key], clock=FixedClock(when))
        assert (await auth(authn, mint(key, claims(now=when, ttl=60)))).expires_at == when + 60
        await rejects(
            authn,
            mint(key, claims(now=NOW)),
            Reason.TOKEN_EXPIRED if when > NOW else Reason.TOKEN_ISSUED_IN_FUTURE,
        )


async def test_exp_required_by_default() -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW, ttl=None))
    err = await rejects(build([key]), token, Reason.MISSING_CLAIM)
    assert "exp" in err.description
    identity = await auth(build([key], require_exp=False), token)
    assert identity.expires_at is None


async def test_max_lifetime() -> None:
    key = rsa_key()
    authn = build([key], max_lifetime_seconds=3600, require_exp=False)
    await auth(authn, mint(key, claims(now=NOW, ttl=3600)))
    err = await rejects(authn, mint(key, claims(now=NOW, ttl=7200)), Reason.INVALID_TOKEN)
    assert "lifetime" in err.description
    # a lifetime limit implies exp is required
    await rejects(authn, mint(key, claims(now=NOW, ttl=None)), Reason.MISSING_CLAIM)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1900000300", True, None, [1], 10**400])
async def test_non_numeric_dates_are_malformed(claim: str, value: Any) -> None:
    key = rsa_key()
    if value is None:
        body = json.dumps(claims(now=NOW))[:-1] + f', "{claim}x": 1}}'
        await auth(build([key]), mint(key, body.encode()))  # absent nbf/iat is fine
        return
    payload = claims(now=NOW)
    payload[claim] = value
    await rejects(build([key]), mint(key, payload), Reason.MALFORMED_TOKEN)


async def test_wrong_audience_string_and_array() -> None:
    key = rsa_key()
    authn = build([key], audiences=[AUDIENCE, "api://other"])
    await rejects(authn, mint(key, claims(now=NOW, audience="api://evil")), Reason.WRONG_AUDIENCE)
    await rejects(authn, mint(key, claims(now=NOW, audience=["a", "b"])), Reason.WRONG_AUDIENCE)
    await rejects(authn, mint(key, claims(now=NOW, audience=[])), Reason.WRONG_AUDIENCE)
    await rejects(authn, mint(key, claims(now=NOW, aud=None)), Reason.MISSING_CLAIM)
    await rejects(authn, mint(key, claims(now=NOW, audience=7)), Reason.MALFORMED_TOKEN)  # type: ignore[arg-type]


async def test_audience_array_with_one_match_allowed() -> None:
    key = rsa_key()
    authn = build([key], audiences=["api://other", AUDIENCE])
    await auth(authn, mint(key, claims(now=NOW, audience=["api://x", AUDIENCE, "api://y"])))
    await auth(authn, mint(key, claims(now=NOW, audience="api://other")))


async def test_wrong_issuer() -> None:
    key = rsa_key()
    authn = build([key])
    wrong = ("https://evil.example.com", ISSUER + "/", ISSUER[:-4], ISSUER.upper(), " " + ISSUER)
    for iss in wrong:
        await rejects(authn, mint(key, claims(now=NOW, issuer=iss)), Reason.WRONG_ISSUER)
    await rejects(authn, mint(key, claims(now=NOW, iss=None)), Reason.MISSING_CLAIM)


async def test_subject_claim() -> None:
    key = rsa_key()
    await rejects(build([key]), mint(key, claims(now=NOW, sub=None)), Reason.MISSING_CLAIM)
    await rejects(build([key]), mint(key, claims(now=NOW, sub=42)), Reason.MALFORMED_TOKEN)
    authn = build([key], subject_claim="client_id")
    assert (await auth(authn, mint(key, claims(now=NOW, client_id="svc-7")))).subject == "svc-7"
    await rejects(authn, mint(key, claims(now=NOW)), Reason.MISSING_CLAIM)


# ----------------------------------------------------------------------------------------- identity


async def test_identity_fields() -> None:
    key = rsa_key()
    authn = build([key], name="corp")
    identity = await auth(authn, mint(key, claims(now=NOW, ttl=600, email="a@example.com")))
    assert identity.method is AuthMethod.JWT
    assert identity.authenticator == "corp"
    assert identity.subject == "user-1"
    assert identity.expires_at == float(int(NOW + 600))
    assert identity.claims["email"] == "a@example.com"
    assert identity.key_id == "rsa-1"
    with pytest.raises(TypeError):
        identity.claims["sub"] = "admin"  # type: ignore[index]


async def test_scopes_from_scope_string_and_scp_array() -> None:
    key = rsa_key()
    authn = build([key])
    identity = await auth(authn, mint(key, claims(now=NOW, scope="orders:read  orders:write")))
    assert identity.scopes == {"orders:read", "orders:write"}
    identity = await auth(authn, mint(key, claims(now=NOW, scp=["a", "b", 3, ""])))
    assert identity.scopes == {"a", "b"}
    identity = await auth(authn, mint(key, claims(now=NOW, scp="x y", scope="z")))
    assert identity.scopes == {"x", "y", "z"}
    only_scp = build([key], scope_claims=["scp"])
    identity = await auth(only_scp, mint(key, claims(now=NOW, scp="x", scope="z")))
    assert identity.scopes == {"x"}


async def test_claims_to_headers() -> None:
    key = rsa_key()
    authn = build(
        [key],
        claims_to_headers={
            "sub": "x-auth-subject",
            "groups": "x-auth-groups",
            "realm_access.roles": "x-auth-roles",
            "org": "x-auth-org",
            "org.id": "x-auth-org-id",
            "https://example.com/tenant": "x-auth-tenant",
            "admin": "x-auth-admin",
            "level": "x-auth-level",
            "missing": "x-auth-missing",
            "org.missing.deep": "x-auth-deep",
            "evil": "x-auth-evil",
            "empty": "x-auth-empty",
        },
    )
    namespaced: dict[str, Any] = {"https://example.com/tenant": "t-1"}
    token = mint(
        key,
        claims(
            now=NOW,
            groups=["eng", "ops"],
            realm_access={"roles": ["reader", "writer"]},
            org={"id": 42, "name": "Acme"},
            admin=True,
            level=3,
            evil="a\r\nx-injected: 1",
            empty=[],
            **namespaced,
        ),
    )
    headers = dict((await auth(authn, token)).headers)
    assert headers == {
        "x-auth-subject": "user-1",
        "x-auth-groups": "eng,ops",
        "x-auth-roles": "reader,writer",
        "x-auth-org": '{"id":42,"name":"Acme"}',
        "x-auth-org-id": "42",
        "x-auth-tenant": "t-1",
        "x-auth-admin": "true",
        "x-auth-level": "3",
        # kept as is: the pipeline denies it (identity_not_representable), never drops it
        "x-auth-evil": "a\r\nx-injected: 1",
    }


def test_render_claim() -> None:
    assert render_claim(None) is None
    assert render_claim([]) is None
    assert render_claim(["a", {"b": 1}, 2]) == 'a,{"b":1},2'
    assert render_claim("é") == "é"
    assert render_claim("tab\tok") == "tab\tok"
    # not dropped (that would allow without the header): the pipeline denies it
    assert render_claim("nul\x00") == "nul\x00"


# ---------------------------------------------------------------------------------------- sources


async def test_missing_credential_is_absent() -> None:
    assert await build().authenticate(make_view()) is None


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Token abc", "Bearerabc", ""])
async def test_other_scheme_is_absent(value: str) -> None:
    assert await build().authenticate(make_view(headers={"authorization": value})) is None


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    ", "bearer \t "])
async def test_empty_bearer_is_malformed(value: str) -> None:
    view = make_view(headers={"authorization": value})
    await denied(build().authenticate(view), Reason.MALFORMED_TOKEN)


@pytest.mark.parametrize("value", ["Bearer garbage", "Bearer a.b", "Bearer tok1, Bearer tok2"])
async def test_garbled_bearer_is_malformed(value: str) -> None:
    view = make_view(headers={"authorization": value})
    await denied(build().authenticate(view), Reason.MALFORMED_TOKEN)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW))
    view = make_view(headers={"authorization": f"{scheme} {token}"})
    assert (await build([key]).authenticate(view)) is not None


async def test_header_query_and_cookie_sources() -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW))
    by_header = build([key], source={"header": "X-JWT-Assertion"})
    assert await by_header.authenticate(make_view(headers={"x-jwt-assertion": token}))
    assert await by_header.authenticate(make_view(headers=bearer(token))) is None
    await denied(
        by_header.authenticate(make_view(headers={"x-jwt-assertion": " "})), Reason.MALFORMED_TOKEN
    )
    assert by_header.credential_headers() == ("x-jwt-assertion",)

    by_query = build([key], source={"query": "access_token"})
    assert await by_query.authenticate(make_view(query={"access_token": token}))
    assert await by_query.authenticate(make_view()) is None
    await denied(
        by_query.authenticate(make_view(query={"access_token": ""})), Reason.MALFORMED_TOKEN
    )
    assert by_query.credential_query_params() == ("access_token",)
    assert by_query.credential_headers() == ()

    by_cookie = build([key], source={"cookie": "session"})
    view = make_view(headers={"cookie": f"theme=dark; session={token}"})
    assert await by_cookie.authenticate(view)
    assert await by_cookie.authenticate(make_view(headers={"cookie": "theme=dark"})) is None
    assert by_cookie.credential_cookies() == ("session",)


async def test_custom_authorization_scheme() -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW))
    authn = build([key], source={"authorization": "JWT"})
    assert await authn.authenticate(make_view(headers={"authorization": f"jwt {token}"}))
    assert await authn.authenticate(make_view(headers=bearer(token))) is None
    assert authn.challenge() == 'JWT realm="extauthz"'


# --------------------------------------------------------------------------------------- protocol


async def test_protocol_and_challenge() -> None:
    key = rsa_key()
    authn = build([key])
    assert isinstance(authn, Authenticator)
    assert authn.kind is AuthMethod.JWT
    assert authn.credential_headers() == ("authorization",)
    assert authn.credential_query_params() == ()
    assert authn.credential_cookies() == ()
    assert authn.challenge() == 'Bearer realm="extauthz"'
    err = await rejects(authn, mint(key, claims(now=NOW - 3600, ttl=60)), Reason.TOKEN_EXPIRED)
    assert authn.challenge(err) == (
        'Bearer realm="extauthz", error="invalid_token", error_description="token expired"'
    )


async def test_errors_never_contain_the_token() -> None:
    key = rsa_key()
    authn = build([key])
    good = mint(key, claims(now=NOW - 3600, ttl=60))
    bad_tokens = [good, tamper(good, sub="x"), good + "x", mint(rsa_key("zz"), claims(now=NOW))]
    for token in bad_tokens:
        with pytest.raises(AuthenticationError) as info:
            await authn.authenticate(make_view(headers=bearer(token)))
        err = info.value
        for part in token.split("."):
            if len(part) > 8:
                assert part not in f"{err} {err.description} {err.detail}"


# ------------------------------------------------------------------------------------- build time


def test_from_spec_file_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(json.dumps(jwks(rsa_key())))
    ctx = make_ctx(base_dir=tmp_path)
    authn = JwtAuthenticator.from_spec("f", spec(jwks={"file": "keys/jwks.json"}), ctx)
    assert authn.jwks.keyset is not None
    assert [k.kid for k in authn.jwks.keyset.keys] == ["rsa-1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read JWKS file"),
        ("{not json", "not valid JSON"),
        ('{"keys": NaN}', "not valid JSON"),
        ('["x"]', "JWK Set"),
        ('{"keys": []}', "no usable key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable key"),
    ],
)
def test_from_spec_bad_file(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "jwks.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        JwtAuthenticator.from_spec(
            "f", spec(jwks={"file": "jwks.json"}), make_ctx(base_dir=tmp_path)
        )


def test_from_spec_inline_without_usable_key() -> None:
    ec_only = jwks(ec_key())
    with pytest.raises(ValueError, match="no usable key"):
        build(jwks={"inline": ec_only}, algorithms=["RS256"])


def test_from_spec_registers_key_count() -> None:
    metrics = Metrics()
    build([rsa_key("a"), rsa_key("b")], metrics=metrics)
    assert sample(metrics, "extauthz_jwks_keys", issuer=ISSUER) == 2


def test_from_spec_refuses_max_stale_below_refresh_interval() -> None:
    with pytest.raises(ValueError, match="max_stale_seconds"):
        build(
            jwks={"url": "https://idp.example.com/jwks"},
            refresh_interval_seconds=600,
            max_stale_seconds=60,
        )


# ------------------------------------------------------------------------------------------- cache


async def test_cache_hit_on_second_verify() -> None:
    key = rsa_key()
    metrics = Metrics()
    authn = build([key], metrics=metrics)
    token = mint(key, claims(now=NOW))
    first = await auth(authn, token)
    second = await auth(authn, token)
    # a hit: the same verified identity (each request gets its own Identity, with the claims
    # of its own token — byte for byte the verified one; docs/memory.md)
    assert second == first and second.claims == first.claims
    assert second.scopes is first.scopes and second.headers is first.headers
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="miss") == 1
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit") == 1


async def test_cache_entries_hold_no_claims_and_no_token_text() -> None:
    key = rsa_key()
    authn = build([key], claims_to_headers={"email": "x-email"})
    token = mint(key, claims(now=NOW, jti="jti-1", email="a@example.com", roles=["admin"]))
    await auth(authn, token)
    [digest] = list(authn._cache)
    assert len(digest) == 32 and digest not in token.encode()
    entry = authn._cache.get(digest, NOW)
    assert entry is not None and not entry.identity.claims  # claims: read from each request
    assert entry.identity.headers == (("x-email", "a@example.com"),)  # rendered once
    fields = [getattr(entry, name) for name in entry.__slots__]
    assert not any(isinstance(v, str) and (v in token or token in v) and len(v) > 40
                   for v in fields)


async def test_a_cached_token_with_a_null_cnf_is_still_refused_on_a_hit() -> None:
    key = rsa_key()
    authn = build([key])
    payload = claims(now=NOW)
    payload["cnf"] = None  # present, but null: not the same as absent
    token = mint(key, payload)
    for _ in range(2):  # the miss and the hit
        await rejects(authn, token, Reason.INVALID_TOKEN)


async def test_claims_are_decoded_only_when_read() -> None:
    key = rsa_key()
    authn = build([key])
    token = mint(key, claims(now=NOW, roles=["a", "b"]))
    await auth(authn, token)
    identity = await auth(authn, token)  # a hit
    assert identity.claims._claims is None  # type: ignore[attr-defined]
    assert identity.claims["roles"] == ["a", "b"] and "sub" in identity.claims
    assert dict(identity.claims)["iss"] == ISSUER


async def test_cached_token_still_expires() -> None:
    key = rsa_key()
    clock = FixedClock(NOW)
    metrics = Metrics()
    authn = build([key], clock=clock, metrics=metrics, leeway_seconds=10)
    token = mint(key, claims(now=NOW, ttl=60))
    await auth(authn, token)
    clock.advance(69)
    await auth(authn, token)
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit") == 1
    clock.advance(1)
    await rejects(authn, token, Reason.TOKEN_EXPIRED)


async def test_cached_token_respects_a_clock_going_back() -> None:
    key = rsa_key()
    clock = FixedClock(NOW)
    authn = build([key], clock=clock, leeway_seconds=0)
    token = mint(key, claims(now=NOW, nbf=int(NOW)))
    await auth(authn, token)
    clock.set(NOW - 100)
    await rejects(authn, token, Reason.TOKEN_NOT_YET_VALID)


async def test_failures_are_not_cached_and_cache_is_bounded() -> None:
    key = rsa_key()
    metrics = Metrics()
    authn = build([key], metrics=metrics, cache_size=2)
    tokens = [mint(key, claims(now=NOW, jti=str(i))) for i in range(3)]
    for t in tokens:
        await auth(authn, t)
    await auth(authn, tokens[0])  # evicted: miss
    await auth(authn, tokens[2])  # kept: hit
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="miss") == 4
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit") == 1
    bad = tamper(tokens[1], sub="x")
    for _ in range(2):
        await rejects(authn, bad, Reason.BAD_SIGNATURE)


async def test_cache_disabled() -> None:
    key = rsa_key()
    metrics = Metrics()
    authn = build([key], metrics=metrics, cache_size=0)
    token = mint(key, claims(now=NOW))
    first = await auth(authn, token)
    second = await auth(authn, token)
    assert first is not second and first == second
    assert sample(metrics, "extauthz_cache_requests_total", cache="jwt", result="hit") == 0


# ------------------------------------------------------------------------------ typ (issue 14.7)


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt",
                                 "application/JWT"])
async def test_typ_absent_or_an_access_token_type_is_accepted(typ: str | None) -> None:
    key = rsa_key()
    await auth(build([key]), mint(key, claims(now=NOW), headers={"typ": typ}))


@pytest.mark.parametrize("typ", ["JWE", "foo", "secevent+jwt", "id+jwt", "application/jose",
                                 "", 7, ["JWT"], "JWT ", "text/jwt"])
async def test_attack_token_of_another_type_is_refused(typ: object) -> None:
    key = rsa_key()
    token = mint(key, claims(now=NOW), headers={"typ": typ})
    if typ == "JWT ":  # surrounding whitespace is normalized away: same type
        await auth(build([key]), token)
        return
    err = await rejects(build([key]), token, Reason.INVALID_TOKEN)
    assert err.description == "token type not accepted"


async def test_typ_list_and_require_typ_are_configurable() -> None:
    key = rsa_key()
    authn = build([key], typ=["at+jwt"], require_typ=True)
    await auth(authn, mint(key, claims(now=NOW), headers={"typ": "application/at+jwt"}))
    await rejects(authn, mint(key, claims(now=NOW), headers={"typ": "JWT"}), Reason.INVALID_TOKEN)
    await rejects(authn, mint(key, claims(now=NOW), headers={"typ": None}), Reason.INVALID_TOKEN)


# ------------------------------------------------------------------- duplicate kid (issue 14.7)


async def test_duplicate_kid_every_published_key_is_tried() -> None:
    # rsa_key is cached per kid: three distinct keys, all published (or minted) as kid "k1"
    first, second, impostor = rsa_key("k1"), rsa_key("k1-b"), rsa_key("k1-c")
    authn = build([first, {**second.public_jwk(), "kid": "k1"}])
    assert (await auth(authn, mint(first, claims(now=NOW)))).key_id == "k1"
    assert (await auth(authn, mint(second, claims(now=NOW), kid="k1"))).key_id == "k1"
    # not published: no key under the kid verifies it
    await rejects(authn, mint(impostor, claims(now=NOW), kid="k1"), Reason.BAD_SIGNATURE)


async def test_far_future_exp_without_max_lifetime_is_accepted_as_documented() -> None:
    key = rsa_key()
    far = claims(now=NOW, exp=NOW + 10 * 365 * 86400)
    await auth(build([key]), mint(key, far))
    await rejects(build([key], max_lifetime_seconds=3600), mint(key, far), Reason.INVALID_TOKEN)
