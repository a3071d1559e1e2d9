"""Properties of JWT decoding: base64url segments, JSON segments, the shape test used by bearer
dispatch, the full verifier (random tokens, and *signed* random headers and payloads, so the
claim checks behind the signature are reached too) and JWK Set parsing.

Invariants: ``b64url_decode`` / ``_json_segment`` raise only ``ValueError``; the verifier raises
only ``AuthenticationError`` (never allows a token it did not verify); ``parse_jwks`` raises only
``ValueError`` (for a document that is not a JWK Set) and skips every malformed key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauthz.authn import dispatch
from extauthz.authn.introspection import looks_like_jwt
from extauthz.authn.jwks import ALGORITHMS, b64url_decode, parse_jwks
from extauthz.authn.jwt import JwtAuthenticator, _json_segment
from extauthz.errors import AuthenticationError
from extauthz.types import Headers, RequestView
from tests.support.allkinds import AllKinds, Running, write_all_kinds
from tests.support.hypo import budget
from tests.support.tokens import AUDIENCE, ISSUER, b64url, ec_key, ed25519_key, mint, rsa_key

_B64URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
segments = st.one_of(
    st.text(st.sampled_from(_B64URL_CHARS), max_size=60),
    st.text(st.sampled_from(_B64URL_CHARS + "=+/. \x00é"), max_size=30),
    st.binary(max_size=40).map(b64url),
)
# JSON values, nested a little, with the awkward numbers JSON allows.
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.sampled_from([10**30, -(10**30), 1e308, 2**63, -1, 0]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> AllKinds:
    return write_all_kinds(tmp_path_factory.mktemp("prop-jwt"))


@pytest.fixture(scope="module")
def running(kinds: AllKinds) -> Iterator[Running]:
    with Running(kinds) as started:
        yield started


def _verifier(running: Running) -> JwtAuthenticator:
    authenticator = running.snapshot.authenticators["idp"]
    assert isinstance(authenticator, JwtAuthenticator)
    return authenticator


def _bearer(token: str) -> RequestView:
    return RequestView(method="GET", host="h", path="/",
                       headers=Headers({"authorization": f"Bearer {token}"}))


def _outcome(running: Running, token: str) -> str:
    """``allow`` or the reason; anything but AuthenticationError escapes (and fails the test)."""
    try:
        running.run(_verifier(running).authenticate(_bearer(token)))
    except AuthenticationError as exc:
        return exc.reason.value
    return "allow"


# -- segments ------------------------------------------------------------------------------------


@budget(300)
@given(st.text(max_size=60))
def test_b64url_decode_raises_only_value_error(text: str) -> None:
    try:
        raw = b64url_decode(text)
    except ValueError:
        return
    assert b64url(raw) == text  # one accepted encoding per byte string


@budget(200)
@given(st.binary(max_size=60))
def test_b64url_round_trip(raw: bytes) -> None:
    assert b64url_decode(b64url(raw)) == raw


@budget(300)
@given(st.one_of(segments, json_values.map(lambda v: b64url(json.dumps(v).encode())),
                 st.binary(max_size=40).map(b64url),
                 st.sampled_from([b"[" * 5000, b'{"a":1,"a":2}', b"NaN", b"1e999",
                                  b"9" * 5000, b"\xff\xfe", b'{"\\ud800":1}']).map(b64url)))
def test_json_segment_raises_only_value_error(segment: str) -> None:
    with contextlib.suppress(ValueError):
        _json_segment(segment)


@budget(300)
@given(st.one_of(st.text(max_size=80),
                 st.tuples(segments, segments, segments).map(".".join)))
def test_looks_like_jwt_never_raises(token: str) -> None:
    assert isinstance(looks_like_jwt(token), bool)


# -- the verifier --------------------------------------------------------------------------------


@budget(300)
@given(st.one_of(st.tuples(segments, segments, segments).map(".".join), st.text(max_size=80),
                 st.lists(segments, max_size=5).map(".".join)))
def test_random_tokens_are_refused_cleanly(running: Running, token: str) -> None:
    assert _outcome(running, token) != "allow"


@budget(150)
@given(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "x5c"]),
                       json_values, max_size=5),
       st.sampled_from([None, "ES256", "RS256", "none", "HS256", "EdDSA"]))
def test_signed_random_headers_are_refused_or_verified(
    running: Running, kinds: AllKinds, header: dict[str, Any], alg: str | None
) -> None:
    """Any header, correctly signed: the pinned alg and the key lookup decide, nothing raises."""
    now = time.time()
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "s", "exp": int(now) + 60}
    if alg is not None:
        header["alg"] = alg
    named = header.get("alg")
    keys = {"ES256": kinds.jwt_key, "RS256": rsa_key(), "EdDSA": ed25519_key()}
    key = keys.get(named if isinstance(named, str) else "", kinds.jwt_key)
    try:
        token = mint(key, payload, headers={k: v for k, v in header.items() if v is not None},
                     sign_alg=key.alg)
    except (TypeError, ValueError):  # the minting library refuses this header
        return
    outcome = _outcome(running, token)
    if outcome == "allow":
        decoded = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        assert decoded["alg"] == "ES256" and decoded.get("kid", "ec-1") == "ec-1"
        assert "crit" not in decoded and decoded.get("b64", True) is True


@budget(200)
@given(st.dictionaries(st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "scope",
                                        "email", "realm_access", "jti", "azp"]),
                       json_values, max_size=8),
       st.booleans())
def test_signed_random_claims_are_refused_or_verified(
    running: Running, kinds: AllKinds, payload: dict[str, Any], valid_base: bool
) -> None:
    """Signed payloads reach the claim checks: any claim types, huge numbers, nesting."""
    now = time.time()
    if valid_base:
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "s", "exp": int(now) + 60, **payload}
    token = mint(kinds.jwt_key, payload)
    outcome = _outcome(running, token)
    if outcome == "allow":
        assert payload["iss"] == ISSUER
        assert payload["aud"] == AUDIENCE or AUDIENCE in payload["aud"]
        assert isinstance(payload["sub"], str) and payload["sub"]
        assert float(payload["exp"]) + 5 > now


@budget(100)
@given(st.binary(max_size=200))
def test_signed_non_json_payloads_are_malformed(running: Running, kinds: AllKinds,
                                                raw: bytes) -> None:
    outcome = _outcome(running, mint(kinds.jwt_key, raw))
    assert outcome != "allow"


# -- JWK Sets ------------------------------------------------------------------------------------


_GOOD = [ec_key().public_jwk(alg=True), rsa_key().public_jwk(alg=True),
         ed25519_key().public_jwk(alg=True)]
# the metadata members more often: a mutated key-material member only ever gives "invalid key"
_MEMBERS = ["kty", "kid", "alg", "use", "key_ops", "crv", "x", "y", "n", "e", "d", "k",
            "alg", "kid", "use", "key_ops"]
_member_values = st.one_of(
    json_values, segments, st.lists(json_scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), json_scalars, max_size=2),
)


@st.composite
def mutated_jwk(draw: st.DrawFn) -> Any:
    base = dict(draw(st.sampled_from(_GOOD)))
    for _ in range(draw(st.integers(1, 3))):
        member = draw(st.sampled_from(_MEMBERS))
        if draw(st.booleans()):
            base.pop(member, None)
        else:
            base[member] = draw(_member_values)
    return base


@budget(300)
@given(st.one_of(
    st.lists(mutated_jwk(), min_size=1, max_size=3).map(lambda ks: {"keys": ks}),
    st.lists(st.one_of(mutated_jwk(), json_values), max_size=5).map(lambda ks: {"keys": ks}),
    json_values,
), st.sets(st.sampled_from(sorted(ALGORITHMS)), min_size=1, max_size=4))
def test_jwks_parsing_skips_bad_keys(document: Any, algorithms: set[str]) -> None:
    try:
        keyset = parse_jwks(document, algorithms)
    except ValueError:
        assert not (isinstance(document, dict) and isinstance(document.get("keys"), list))
        return
    assert len(keyset.keys) + len(keyset.skipped) <= len(document["keys"])
    for key in keyset.keys:
        assert key.algorithms <= algorithms



# -- bearer dispatch (JWT or opaque; which issuer) -----------------------------------------------


@budget(300)
@given(st.one_of(st.tuples(segments, segments, segments).map(".".join),
                 json_values.map(lambda v: "eyJhbGciOiJFUzI1NiJ9."  # {"alg":"ES256"}
                                 + b64url(json.dumps(v).encode()) + ".c2ln"),
                 st.text(max_size=60)))
def test_bearer_dispatch_never_raises(running: Running, token: str) -> None:
    route = next(r for r in running.snapshot.routes.routes if r.name == "bearer")
    kept = dispatch.select(route.authenticators, _bearer(token))
    assert kept and set(kept) <= set(route.authenticators)
    if looks_like_jwt(token):  # the unverified issuer (routes with several JWT issuers)
        issuer = dispatch._unverified_issuer(token)
        assert issuer is None or isinstance(issuer, str)
