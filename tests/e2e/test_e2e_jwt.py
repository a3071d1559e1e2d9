"""Bearer JWTs through the real Envoy, with keys from the demo IdP via OIDC discovery.

Routes: ``profile`` (/profile/...: JWT only), ``orders`` (/v1/users/{user_id}/orders: JWT or API
key, scope orders:read), ``admin`` (/admin/...: JWT or API key, scope admin).
Each module has its own IdP, so rotating keys here affects no other module.
"""

from __future__ import annotations

import time

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization

from extauthz.demo.idp import DemoIdP, unsigned_token
from tests.e2e.helpers import assert_denied, upstream_headers, wait_for_status
from tests.support.processes import Stack
from tests.support.tokens import bearer, hmac_token, tamper
from tests.support.transports import GRPC_TRANSPORTS

#: every test here runs over both gRPC servers: grpc.aio and the Envoy front (conftest.py)
STACK_TRANSPORTS = GRPC_TRANSPORTS

PROFILE = "/profile/me"
ORDERS = "/v1/users/alice/orders"
BEARER = 'Bearer realm="extauthz"'
INVALID = 'error="invalid_token"'


def test_valid_token_is_allowed(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", scopes=["orders:read"], extra={"email": "alice@example.com"})
    seen = upstream_headers(stack.get(PROFILE, bearer(token)))
    assert seen["x-auth-subject"] == "alice"
    assert seen["x-auth-method"] == "jwt"
    assert seen["x-auth-email"] == "alice@example.com"
    assert "authorization" not in seen


def test_valid_token_with_scope_on_the_template_route(stack: Stack, idp: DemoIdP) -> None:
    seen = upstream_headers(stack.get(ORDERS, bearer(idp.mint("alice", scopes=["orders:read"]))))
    assert seen["x-auth-scopes"] == "orders:read"


def test_no_token_is_401_with_a_bare_bearer_challenge(stack: Stack) -> None:
    r = stack.get(PROFILE)
    assert_denied(r, 401, "missing_credential")
    # RFC 6750 §3.1: without a token the challenge carries no error code.
    assert r.header_values("www-authenticate") == [BEARER]


def test_no_credential_on_a_two_method_route_challenges_both(stack: Stack) -> None:
    # One challenge per accepted method. extauthz sends two WWW-Authenticate headers; Envoy 1.40
    # drops denied_response headers whose `append` is true, so this also pins the wire encoding.
    r = stack.get(ORDERS)
    assert_denied(r, 401, "missing_credential")
    challenges = r.header_values("www-authenticate")
    assert BEARER in challenges, challenges
    assert any(c.startswith("ApiKey ") for c in challenges), challenges


def test_expired_token_is_401(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", expires_in=-120, issued_at=time.time() - 600)
    r = stack.get(PROFILE, bearer(token))
    assert_denied(r, 401, "token_expired", challenge_contains=(BEARER, INVALID))


def test_token_not_yet_valid_is_401(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", not_before=time.time() + 600)
    assert_denied(stack.get(PROFILE, bearer(token)), 401, "token_not_yet_valid")


def test_wrong_audience_is_401(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", audience="some-other-api")
    assert_denied(stack.get(PROFILE, bearer(token)), 401, "wrong_audience",
                  challenge_contains=(INVALID,))  # fmt: skip


def test_wrong_issuer_is_401(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", issuer="https://evil.example")
    assert_denied(stack.get(PROFILE, bearer(token)), 401, "wrong_issuer",
                  challenge_contains=(INVALID,))  # fmt: skip


def test_bad_signature_is_401(stack: Stack, idp: DemoIdP) -> None:
    # Signed by a key the IdP never published, but claiming the published kid.
    forger = idp.new_key(publish=False)
    token = idp.mint("alice", kid=idp.signing_kid, sign_with=forger)
    assert_denied(stack.get(PROFILE, bearer(token)), 401, "bad_signature",
                  challenge_contains=(INVALID,))  # fmt: skip


def test_tampered_payload_is_401(stack: Stack, idp: DemoIdP) -> None:
    r = stack.get(PROFILE, bearer(tamper(idp.mint("alice"), sub="admin")))
    assert_denied(r, 401, "bad_signature")


def test_alg_none_attack_is_401(stack: Stack, idp: DemoIdP) -> None:
    token = unsigned_token(idp.claims("admin", scopes=["admin"]), {"kid": idp.signing_kid})
    r = stack.get("/admin/stats", bearer(token))
    assert_denied(r, 401, "disallowed_algorithm", challenge_contains=(INVALID,))


def test_hs256_with_the_public_key_as_secret_is_401(stack: Stack, idp: DemoIdP) -> None:
    # Algorithm confusion: an HMAC "signed" with the RSA public key the IdP publishes.
    public_pem = (
        idp.key(idp.signing_kid)
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = hmac_token(public_pem, idp.claims("admin", scopes=["admin"]), kid=idp.signing_kid)
    r = stack.get("/admin/stats", bearer(token))
    assert_denied(r, 401, "disallowed_algorithm")


def test_garbage_token_is_401_malformed(stack: Stack) -> None:
    assert_denied(stack.get(PROFILE, bearer("not-a-jwt")), 401, "malformed_token",
                  challenge_contains=(INVALID,))  # fmt: skip


def test_insufficient_scope_is_403_with_the_rfc6750_challenge(stack: Stack, idp: DemoIdP) -> None:
    r = stack.get("/admin/stats", bearer(idp.mint("alice", scopes=["orders:read"])))
    assert_denied(r, 403, "insufficient_scope")
    assert r.header_values("www-authenticate") == [
        'Bearer realm="extauthz", error="insufficient_scope", scope="admin"'
    ]


def test_401_vs_403(stack: Stack, idp: DemoIdP) -> None:
    # No token: who are you? (401). Valid token without the scope: you may not (403).
    assert stack.get(ORDERS).status == 401
    assert stack.get(ORDERS, bearer(idp.mint("bob"))).status == 403
    assert stack.get(ORDERS, bearer(idp.mint("bob", scopes=["orders:read"]))).status == 200


def test_unknown_kid_is_401_until_the_key_is_rotated_in(stack: Stack, idp: DemoIdP) -> None:
    staged = idp.new_key(publish=False)
    token = idp.mint("carol", kid=staged)
    r = stack.get(PROFILE, bearer(token))
    assert_denied(r, 401, "unknown_key", challenge_contains=(INVALID,))
    idp.publish(staged)
    # The refetch on an unknown kid is rate-limited (min_refetch_interval_seconds: 1).
    r, waited = wait_for_status(stack, PROFILE, bearer(token), 200, timeout=5)
    assert upstream_headers(r)["x-auth-subject"] == "carol"
    assert waited < 4


def test_rotation_to_an_ec_key(stack: Stack, idp: DemoIdP) -> None:
    new_kid = idp.rotate("ES256")
    token = idp.mint("dave")
    assert pyjwt.get_unverified_header(token) == {"alg": "ES256", "kid": new_kid, "typ": "JWT"}
    r, _ = wait_for_status(stack, PROFILE, bearer(token), 200, timeout=5)
    assert upstream_headers(r)["x-auth-subject"] == "dave"


def test_token_in_the_wrong_scheme_is_missing_not_accepted(stack: Stack, idp: DemoIdP) -> None:
    r = stack.get(PROFILE, {"authorization": f"Token {idp.mint('alice')}"})
    assert_denied(r, 401, "missing_credential", challenge=BEARER)


def test_invalid_token_does_not_fall_through_to_a_valid_api_key(stack: Stack) -> None:
    # Attack: pair a forged bearer token with some valid credential of another kind, hoping the
    # invalid one is skipped. An invalid credential is a 401, whatever else is present.
    from extauthz.demo import DEMO_API_KEY

    headers = {"authorization": "Bearer not-a-jwt", "x-api-key": DEMO_API_KEY}
    r = stack.get(ORDERS, headers)
    assert_denied(r, 401, "malformed_token")


def test_scheme_is_case_insensitive(stack: Stack, idp: DemoIdP) -> None:
    token = idp.mint("alice", scopes=["orders:read"])
    seen = upstream_headers(stack.get(ORDERS, {"Authorization": f"bEaReR {token}"}))
    assert seen["x-auth-subject"] == "alice"
