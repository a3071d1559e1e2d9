"""API key authentication: hashed storage, O(1) lookup, expiry, disabled, sources."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.clock import FixedClock
from extauthz.config.schema import ApiKeySpec, Consumer, CredentialSource
from extauthz.errors import AuthenticationError, Reason
from extauthz.keys import generate_api_key, hash_api_key
from extauthz.types import AuthMethod
from tests.support.builders import NOW, make_ctx, make_view

GOOD = generate_api_key()
EXPIRED = generate_api_key()
DISABLED = generate_api_key()
OTHER = generate_api_key()


def consumers() -> list[Consumer]:
    return [
        Consumer.model_validate({"name": "alice", "keys": [
            {"id": "k1", "hash": hash_api_key(GOOD), "scopes": ["orders:read", "orders:write"]},
            {"id": "k2", "hash": hash_api_key(EXPIRED),
             "expires_at": datetime.fromtimestamp(NOW - 1, UTC).isoformat()},
            {"id": "k3", "hash": hash_api_key(DISABLED), "disabled": True},
        ]}),
        Consumer.model_validate({"name": "bob", "keys": [
            {"id": "b1", "hash": hash_api_key(OTHER)}]}),
    ]


def make(spec: ApiKeySpec | None = None, clock: FixedClock | None = None) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator.from_spec("keys", spec or ApiKeySpec(),
                                         make_ctx(consumers(), clock=clock))


async def test_valid_key_yields_identity() -> None:
    identity = await make().authenticate(make_view(headers={"x-api-key": GOOD}))
    assert identity is not None
    assert identity.method is AuthMethod.API_KEY
    assert identity.subject == "alice" and identity.consumer == "alice"
    assert identity.key_id == "k1"
    assert identity.scopes == {"orders:read", "orders:write"}


async def test_absent_key_is_none() -> None:
    assert await make().authenticate(make_view()) is None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("eak_not-a-real-key", Reason.INVALID_API_KEY),
        ("", Reason.INVALID_API_KEY),
        (EXPIRED, Reason.KEY_EXPIRED),
        (DISABLED, Reason.KEY_DISABLED),
        ("x" * 10_000, Reason.INVALID_API_KEY),
    ],
)
async def test_bad_keys_raise(key: str, reason: Reason) -> None:
    with pytest.raises(AuthenticationError) as info:
        await make().authenticate(make_view(headers={"x-api-key": key}))
    assert info.value.reason is reason
    assert key not in str(info.value) or not key


async def test_key_expires_exactly_at_expiry() -> None:
    clock = FixedClock(NOW - 2)
    auth = make(clock=clock)
    assert await auth.authenticate(make_view(headers={"x-api-key": EXPIRED})) is not None
    clock.set(NOW - 1)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(make_view(headers={"x-api-key": EXPIRED}))


async def test_consumer_restriction() -> None:
    auth = make(ApiKeySpec(consumers=["bob"]))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(make_view(headers={"x-api-key": GOOD}))
    identity = await auth.authenticate(make_view(headers={"x-api-key": OTHER}))
    assert identity is not None and identity.consumer == "bob"


def test_unknown_consumer_in_restriction_refused() -> None:
    with pytest.raises(ValueError, match="unknown consumer"):
        make(ApiKeySpec(consumers=["carol"]))


def test_duplicate_hash_refused() -> None:
    entry = {"id": "1", "hash": hash_api_key(GOOD)}
    dup = [Consumer.model_validate({"name": "a", "keys": [entry]}),
           Consumer.model_validate({"name": "b", "keys": [entry]})]
    with pytest.raises(ValueError, match="same hash"):
        ApiKeyAuthenticator.from_spec("k", ApiKeySpec(), make_ctx(dup))


async def test_sources_authorization_query_cookie() -> None:
    spec = ApiKeySpec(sources=[
        CredentialSource(authorization="ApiKey"),
        CredentialSource(query="api_key"),
        CredentialSource(cookie="session_key"),
    ])
    auth = make(spec)
    for view in (
        make_view(headers={"authorization": f"apikey {GOOD}"}),
        make_view(query={"api_key": GOOD}),
        make_view(headers={"cookie": f"theme=dark; session_key={GOOD}"}),
    ):
        identity = await auth.authenticate(view)
        assert identity is not None and identity.consumer == "alice"
    # Another scheme in Authorization is not ours: absent, not invalid.
    assert await auth.authenticate(make_view(headers={"authorization": "Bearer abc"})) is None
    assert auth.credential_headers() == ("authorization",)
    assert auth.credential_query_params() == ("api_key",)
    assert auth.credential_cookies() == ("session_key",)


def test_challenge_names_where_the_key_goes() -> None:
    auth = make()
    assert auth.challenge() == 'ApiKey realm="extauthz", header="x-api-key"'
    err = AuthenticationError(Reason.KEY_EXPIRED, "API key expired")
    assert auth.challenge(err) == (
        'ApiKey realm="extauthz", header="x-api-key", error="invalid_token", '
        'error_description="API key expired"'
    )


def test_generated_keys_are_random_and_hash_format() -> None:
    a, b = generate_api_key(), generate_api_key()
    assert a != b and a.startswith("eak_") and len(a) >= 40
    assert hash_api_key(a).startswith("sha256:") and len(hash_api_key(a)) == 71
