"""RFC 7662 token introspection against a local aiohttp authorization server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from extauthz.authn.introspection import IntrospectionAuthenticator, looks_like_jwt
from extauthz.clock import FixedClock
from extauthz.config.schema import AuthnSpec, IntrospectionSpec
from extauthz.decision import GrpcCode, from_error
from extauthz.errors import AuthenticationError, CheckError, DependencyUnavailable, Reason
from extauthz.types import AuthMethod
from tests.support.builders import NOW, make_ctx, make_view

CLIENT_ID = "extauthz client"
CLIENT_SECRET = "s3cr:et/with+chars"
TOKEN = "opaque-token-0123456789abcdef"
OTHER = "opaque-token-other"


class FakeAuthorizationServer:
    """Answers introspection requests from ``tokens``; counts calls; can misbehave on demand."""

    def __init__(self, client_auth: str = "basic") -> None:
        self.client_auth = client_auth
        self.tokens: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.delay = 0.0
        self.status = 200
        self.raw: bytes | None = None
        self.requests: list[tuple[str | None, dict[str, str]]] = []

    def authenticated(self, request: web.Request, form: dict[str, str]) -> bool:
        if self.client_auth == "basic":
            expected = base64.b64encode(
                f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}".encode()).decode()
            return (request.headers.get("Authorization") == f"Basic {expected}"
                    and "client_secret" not in form)
        return (form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
                and "Authorization" not in request.headers)

    async def introspect(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append((request.headers.get("Authorization"), form))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raw is not None:
            return web.Response(status=self.status, body=self.raw,
                                content_type="application/json")
        if not self.authenticated(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        answer = self.tokens.get(form.get("token", ""), {"active": False})
        return web.json_response(answer, status=self.status)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        raise web.HTTPFound("/introspect")


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeAuthorizationServer, TestServer]]:
    fake = FakeAuthorizationServer()
    app = web.Application()
    app.router.add_post("/introspect", fake.introspect)
    app.router.add_post("/moved", fake.redirect)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    yield fake, test_server
    await test_server.close()


Made = tuple[IntrospectionAuthenticator, FakeAuthorizationServer, FixedClock]


@pytest.fixture
async def make(
    server: tuple[FakeAuthorizationServer, TestServer], tmp_path: Path
) -> AsyncIterator[Any]:
    fake, test_server = server
    (tmp_path / "client-secret").write_text(CLIENT_SECRET + "\n")
    made: list[IntrospectionAuthenticator] = []

    async def factory(path: str = "/introspect", **spec: Any) -> Made:
        clock = FixedClock(NOW)
        fake.client_auth = spec.get("client_auth", "basic")
        parsed = IntrospectionSpec.model_validate({
            "endpoint": str(test_server.make_url(path)),
            "client_id": CLIENT_ID,
            "client_secret_file": "client-secret",
            **spec,
        })
        auth = IntrospectionAuthenticator.from_spec(
            "opaque", parsed, make_ctx(clock=clock, base_dir=tmp_path))
        await auth.start()
        made.append(auth)
        return auth, fake, clock

    yield factory
    for auth in made:
        await auth.close()


def bearer(token: str = TOKEN) -> Any:
    return make_view("/v1/orders", headers={"authorization": f"Bearer {token}"})


async def refused(auth: IntrospectionAuthenticator, token: str, reason: Reason) -> CheckError:
    """Assert a deny with ``reason`` and the matching HTTP/gRPC status (401 or 503)."""
    with pytest.raises(CheckError) as info:
        await auth.authenticate(bearer(token))
    assert info.value.reason is reason, info.value.description
    decision = from_error(info.value, "r")
    if isinstance(info.value, DependencyUnavailable):
        assert decision.http_status == 503 and decision.grpc_code is GrpcCode.UNAVAILABLE
    else:
        assert isinstance(info.value, AuthenticationError)
        assert decision.http_status == 401 and decision.grpc_code is GrpcCode.UNAUTHENTICATED
    return info.value


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "sub": "alice", "client_id": "orders-app", "scope": "orders:read",
            "exp": NOW + 3600, "iss": "https://as.example", "aud": "orders", **claims}


# ---------------------------------------------------------------------- allow paths


async def test_active_token_yields_identity(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active(scope="orders:read orders:write")
    identity = await auth.authenticate(bearer())
    assert identity is not None
    assert identity.method is AuthMethod.INTROSPECTION
    assert identity.subject == "alice" and identity.consumer == "orders-app"
    assert identity.scopes == {"orders:read", "orders:write"}
    assert identity.expires_at == NOW + 3600
    assert identity.claims["iss"] == "https://as.example" and "active" not in identity.claims
    _, form = fake.requests[0]
    assert form == {"token": TOKEN, "token_type_hint": "access_token"}


async def test_subject_falls_back_to_client_id(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active(sub=None)
    identity = await auth.authenticate(bearer())
    assert identity is not None and identity.subject == "orders-app"


async def test_scope_as_array(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active(scope=["a", "b"])
    identity = await auth.authenticate(bearer())
    assert identity is not None and identity.scopes == {"a", "b"}


async def test_absent_token_is_no_credential(make: Any) -> None:
    auth, fake, _ = await make()
    assert await auth.authenticate(make_view("/")) is None
    assert await auth.authenticate(make_view("/", headers={"authorization": "Basic abc"})) is None
    assert fake.calls == 0


async def test_client_auth_post(make: Any) -> None:
    auth, fake, _ = await make(client_auth="post", token_type_hint=None)
    fake.tokens[TOKEN] = active()
    assert await auth.authenticate(bearer())
    header, form = fake.requests[0]
    assert header is None
    assert form == {"token": TOKEN, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


async def test_client_auth_basic_form_encodes_id_and_secret(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active()
    assert await auth.authenticate(bearer())
    header, form = fake.requests[0]
    assert header is not None
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert decoded == "extauthz+client:s3cr%3Aet%2Fwith%2Bchars"
    assert "client_secret" not in form


# ---------------------------------------------------------------------- deny paths


async def test_inactive_token(make: Any) -> None:
    auth, _, _ = await make()
    await refused(auth, "unknown-token", Reason.INACTIVE_TOKEN)


@pytest.mark.parametrize(
    ("claims", "spec", "reason"),
    [
        ({"aud": "billing"}, {"audiences": ["orders"]}, Reason.WRONG_AUDIENCE),
        ({"aud": None}, {"audiences": ["orders"]}, Reason.WRONG_AUDIENCE),
        ({"iss": "https://evil.example"}, {"issuer": "https://as.example"}, Reason.WRONG_ISSUER),
        ({"iss": None}, {"issuer": "https://as.example"}, Reason.WRONG_ISSUER),
        ({"exp": NOW - 1}, {}, Reason.TOKEN_EXPIRED),
        ({"nbf": NOW + 60}, {}, Reason.TOKEN_NOT_YET_VALID),
        ({"sub": None, "client_id": None}, {}, Reason.MISSING_CLAIM),
    ],
)
async def test_refused_active_tokens(make: Any, claims: dict[str, Any], spec: dict[str, Any],
                                     reason: Reason) -> None:
    auth, fake, _ = await make(**spec)
    fake.tokens[TOKEN] = {k: v for k, v in active(**claims).items() if v is not None}
    await refused(auth, TOKEN, reason)


async def test_audience_array_and_issuer_accepted(make: Any) -> None:
    auth, fake, _ = await make(audiences=["orders", "x"], issuer="https://as.example")
    fake.tokens[TOKEN] = active(aud=["billing", "orders"])
    assert await auth.authenticate(bearer())


@pytest.mark.parametrize("token", ["", "a b", "tok\u00e9n", "x" * 20_000])
async def test_malformed_token(make: Any, token: str) -> None:
    auth, fake, _ = await make()
    view = make_view("/", headers={"authorization": f"Bearer {token}"})
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(view)
    assert info.value.reason is Reason.MALFORMED_TOKEN
    assert fake.calls == 0


# ---------------------------------------------------------------------- caching


async def test_active_result_cached(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active()
    first = await auth.authenticate(bearer())
    second = await auth.authenticate(bearer())
    assert first is second and fake.calls == 1


async def test_cache_bounded_by_max_ttl(make: Any) -> None:
    auth, fake, clock = await make(cache_max_ttl_seconds=60)
    fake.tokens[TOKEN] = active()
    await auth.authenticate(bearer())
    clock.advance(59)
    await auth.authenticate(bearer())
    assert fake.calls == 1
    clock.advance(1)
    await auth.authenticate(bearer())
    assert fake.calls == 2


async def test_cache_bounded_by_exp(make: Any) -> None:
    auth, fake, clock = await make(cache_max_ttl_seconds=3600)
    fake.tokens[TOKEN] = active(exp=NOW + 30)
    await auth.authenticate(bearer())
    clock.advance(29)
    await auth.authenticate(bearer())
    assert fake.calls == 1
    clock.advance(1)  # now == exp: the cached entry is gone and the token is expired
    await refused(auth, TOKEN, Reason.TOKEN_EXPIRED)
    assert fake.calls == 2


async def test_negative_cache(make: Any) -> None:
    auth, fake, clock = await make(negative_cache_ttl_seconds=10)
    await refused(auth, OTHER, Reason.INACTIVE_TOKEN)
    await refused(auth, OTHER, Reason.INACTIVE_TOKEN)
    assert fake.calls == 1
    clock.advance(10)
    fake.tokens[OTHER] = active()  # e.g. the token was just issued and replicated
    assert await auth.authenticate(bearer(OTHER))
    assert fake.calls == 2


async def test_caches_disabled(make: Any) -> None:
    auth, fake, _ = await make(cache_max_ttl_seconds=0, negative_cache_ttl_seconds=0)
    fake.tokens[TOKEN] = active()
    await auth.authenticate(bearer())
    await auth.authenticate(bearer())
    await refused(auth, OTHER, Reason.INACTIVE_TOKEN)
    await refused(auth, OTHER, Reason.INACTIVE_TOKEN)
    assert fake.calls == 4


async def test_concurrent_checks_of_one_token_share_one_request(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active()
    fake.delay = 0.1
    results = await asyncio.gather(*(auth.authenticate(bearer()) for _ in range(25)))
    assert fake.calls == 1
    assert all(r is results[0] and r is not None for r in results)


async def test_concurrent_failures_are_shared_and_not_cached(make: Any) -> None:
    auth, fake, _ = await make()
    fake.status, fake.delay = 500, 0.05
    results = await asyncio.gather(*(auth.authenticate(bearer()) for _ in range(10)),
                                   return_exceptions=True)
    assert fake.calls == 1
    assert all(isinstance(r, DependencyUnavailable) for r in results)
    fake.status, fake.delay = 200, 0
    fake.tokens[TOKEN] = active()
    assert await auth.authenticate(bearer())
    assert fake.calls == 2


async def test_cancelled_check_does_not_cancel_the_shared_request(make: Any) -> None:
    auth, fake, _ = await make()
    fake.tokens[TOKEN] = active()
    fake.delay = 0.1
    first = asyncio.create_task(auth.authenticate(bearer()))
    second = asyncio.create_task(auth.authenticate(bearer()))
    await asyncio.sleep(0.02)
    first.cancel()
    assert await second is not None
    assert fake.calls == 1
    assert first.cancelled()


# ---------------------------------------------------------------------- fail closed


@pytest.mark.parametrize(
    ("status", "raw"),
    [
        (500, b'{"active": true, "sub": "alice"}'),
        (503, b""),
        (200, b"<html>maintenance</html>"),
        (200, b"[1, 2]"),
        (200, b'{"active": "true", "sub": "alice"}'),
        (200, b'{"sub": "alice"}'),
        (200, b'{"active": true, "sub": "alice", "exp": "tomorrow"}'),
        (200, b'{"active": true, "sub": "alice", "scope": 7}'),
        (200, b'{"active": true, "sub": "alice", "aud": [1]}'),
        (200, b'{"active": true, "sub": "alice", "iss": 7}'),
        (200, b'{"active": true, "sub": "alice", "exp": 1e400}'),
    ],
    ids=["500", "503", "html", "array", "active-string", "no-active", "exp-string",
         "scope-number", "aud-numbers", "iss-number", "exp-infinite"],
)
async def test_endpoint_failures_fail_closed(make: Any, status: int, raw: bytes,
                                             caplog: pytest.LogCaptureFixture) -> None:
    auth, fake, _ = await make()
    fake.status, fake.raw = status, raw
    with caplog.at_level(logging.WARNING, logger="extauthz.introspection"):
        await refused(auth, TOKEN, Reason.INTROSPECTION_UNAVAILABLE)
    assert TOKEN not in caplog.text


async def test_timeout_fails_closed(make: Any) -> None:
    auth, fake, _ = await make(timeout_seconds=0.1)
    fake.tokens[TOKEN] = active()
    fake.delay = 1.0
    await refused(auth, TOKEN, Reason.INTROSPECTION_UNAVAILABLE)


async def test_wrong_client_credentials_fail_closed(make: Any) -> None:
    auth, fake, _ = await make()
    fake.client_auth = "post"  # the server now expects another client authentication
    fake.tokens[TOKEN] = active()
    await refused(auth, TOKEN, Reason.INTROSPECTION_UNAVAILABLE)


async def test_redirect_is_not_followed(make: Any) -> None:
    auth, fake, _ = await make(path="/moved")
    fake.tokens[TOKEN] = active()
    await refused(auth, TOKEN, Reason.INTROSPECTION_UNAVAILABLE)
    assert fake.calls == 1


async def test_endpoint_down_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "cs").write_text(CLIENT_SECRET)
    spec = IntrospectionSpec.model_validate({
        "endpoint": "http://127.0.0.1:9/introspect", "client_id": "c", "client_secret_file": "cs",
        "timeout_seconds": 1})
    auth = IntrospectionAuthenticator.from_spec("down", spec, make_ctx(base_dir=tmp_path))
    try:  # no start(): the session is created on first use
        await refused(auth, TOKEN, Reason.INTROSPECTION_UNAVAILABLE)
    finally:
        await auth.close()


# ---------------------------------------------------------------------- configuration


def test_inline_client_secret_refused() -> None:
    with pytest.raises(ValidationError, match="inline secrets are refused"):
        IntrospectionSpec.model_validate({"endpoint": "https://as/introspect", "client_id": "c",
                                          "client_secret": "hunter2"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"client_secret_env": "A", "endpoint": "ftp://as"}, "http"),
        ({}, "exactly one of client_secret_file, client_secret_env"),
        ({"client_secret_env": "A", "client_auth": "jwt"}, "client_auth"),
        ({"client_secret_env": "A", "audiences": []}, "audiences"),
    ],
)
def test_schema_refuses(spec: dict[str, Any], message: str) -> None:
    full = {"endpoint": "https://as/introspect", "client_id": "c", **spec}
    with pytest.raises(ValidationError, match=message):
        IntrospectionSpec.model_validate(full)


def test_secret_from_env_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = IntrospectionSpec.model_validate({"endpoint": "https://as/i", "client_id": "c",
                                             "client_secret_env": "INTROSPECTION_SECRET_T"})
    with pytest.raises(ValueError, match="INTROSPECTION_SECRET_T is not set"):
        IntrospectionAuthenticator.from_spec("x", spec, make_ctx(base_dir=tmp_path))
    monkeypatch.setenv("INTROSPECTION_SECRET_T", "abc")
    auth = IntrospectionAuthenticator.from_spec("x", spec, make_ctx(base_dir=tmp_path))
    assert auth.credential_headers() == ("authorization",)
    assert auth.challenge() == 'Bearer realm="extauthz"'


def test_authn_spec_accepts_the_introspection_kind() -> None:
    spec = AuthnSpec.model_validate({"introspection": {
        "endpoint": "https://as/i", "client_id": "c", "client_secret_env": "X"}})
    assert spec.kind == "introspection"


# ---------------------------------------------------------------------- looks_like_jwt


def _seg(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (f"{_seg({'alg': 'RS256', 'typ': 'JWT'})}.{_seg({'sub': 'a'})}.c2ln", True),
        (f"{_seg({'alg': 'none'})}.{_seg({'sub': 'a'})}.", True),  # the JWT verifier refuses it
        ("opaque-token-0123456789abcdef", False),
        ("a.b", False),
        ("a.b.c.d.e", False),  # JWE compact form
        (f"{_seg({'typ': 'JWT'})}.{_seg({})}.c2ln", False),  # no alg
        (f"{_seg({'alg': 5})}.{_seg({})}.c2ln", False),
        (f"{_seg([1])}.{_seg({})}.c2ln", False),
        ("bm90IGpzb24.e30.c2ln", False),  # header is not JSON
        (f".{_seg({})}.c2ln", False),
        (f"{_seg({'alg': 'RS256'})}..c2ln", False),
        (f"{_seg({'alg': 'RS256'})}.{_seg({})}.c2+ln", False),
        ("x" * 20_000, False),
    ],
)
def test_looks_like_jwt(token: str, expected: bool) -> None:
    assert looks_like_jwt(token) is expected
