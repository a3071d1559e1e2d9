"""OAuth 2.0 token introspection (RFC 7662) through the real Envoy: client -> Envoy
(deploy/envoy/envoy.yaml) -> extauthz -> the test's introspection endpoint; allowed -> echo.

The authorization server is :class:`FakeAS`, an aiohttp app served by the test on 127.0.0.1: it
checks our client authentication, answers per token, counts calls per token, and can be switched
to answer 500, garbage, slowly, or be taken down. Envoy names no route for these paths (its
catch-all), so extauthz selects routes by its own prefixes:

``/opaque/``          opaque          ``opaque``: Basic client auth, secret from a file, positive
                                      cache 300 s, negative cache 30 s, timeout 0.3 s
``/opaque-scoped/``   opaque_scoped   ``opaque`` + ``authz.scopes_all: [orders:write]``
``/opaque-post/``     opaque_post     ``opaque-post``: ``client_auth: post``, secret from an
                                      environment variable of the extauthz process, no cache
``/wrong-client/``    wrong_client    ``wrong-client``: a client secret the server refuses
``/mixed/``           mixed           any-of ``demo-idp`` (JWT) then ``opaque``
``/mixed-reversed/``  mixed_reversed  any-of ``opaque`` then ``demo-idp``

On the mixed routes extauthz's bearer dispatch (:mod:`extauthz.authn.dispatch`) gives a token
shaped like a JWT to the JWT verifier only and any other bearer token to introspection only,
whatever the order of ``authn``.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from aiohttp import web

from extauthz.demo.background import BackgroundApp
from extauthz.demo.envoy import ENVOY_CONFIG
from extauthz.demo.idp import DemoIdP
from tests.e2e.helpers import assert_denied, upstream_headers
from tests.support.envoy_body import BodyStack, start_env_stack
from tests.support.processes import write_config

REALM = "extauthz"
BEARER = f'Bearer realm="{REALM}"'
INVALID = 'error="invalid_token"'
CLIENT_ID = "extauthz-e2e"
CLIENT_SECRET = "s3cret: with spaces & symbols/+="  # form-encoded before Basic (RFC 6749)
POST_CLIENT_ID = "extauthz-post"
POST_SECRET = "post-client-secret-0001"
SECRET_ENV = "EXTAUTHZ_E2E_INTROSPECTION_SECRET"
TIMEOUT = 0.3  # introspection timeout_seconds: below Envoy's 1 s ext_authz timeout

OPAQUE = "/opaque/things"
SCOPED = "/opaque-scoped/orders"
POST = "/opaque-post/things"
WRONG_CLIENT = "/wrong-client/things"
MIXED = "/mixed/things"
MIXED_REVERSED = "/mixed-reversed/things"

#: FakeAS.mode values: answer normally, 500, a 200 that is not JSON, or after ``slow_seconds``
MODES = ("ok", "error", "garbage", "slow")


# -- the authorization server ----------------------------------------------------------------


@dataclass
class Call:
    """One introspection request as the server received it."""

    token: str
    form: dict[str, str]
    authorization: str | None
    client: str | None  # the authenticated client id (None: refused)


@dataclass
class FakeAS:
    """An RFC 7662 introspection endpoint under the test's control (thread-safe)."""

    clients: dict[str, str]  # client id -> secret
    mode: str = "ok"  # one of MODES
    #: seconds a "slow" answer takes, and an optional delay per token in mode "ok"
    slow_seconds: float = 1.0
    delays: dict[str, float] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: BackgroundApp | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"{self.server.base_url}/introspect"

    def issue(self, **doc: Any) -> str:
        """A new opaque token whose introspection answer is ``doc`` (``active`` included)."""
        token = "at_" + uuid.uuid4().hex
        with self._lock:
            self.responses[token] = dict(doc)
        return token

    def active(self, sub: str = "alice", *, scope: str = "orders:read", **extra: Any) -> str:
        doc = {"active": True, "sub": sub, "client_id": "web-app", "scope": scope,
               "exp": int(time.time()) + 300, **extra}  # fmt: skip
        return self.issue(**doc)

    def revoke(self, token: str) -> None:
        with self._lock:
            self.responses[token] = {"active": False}

    def count(self, token: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.token == token)

    def calls_for(self, token: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.token == token]

    def _client(self, request: web.Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                pair = base64.b64decode(value, validate=True).decode("utf-8")
            except ValueError:
                return None
            raw_id, sep, raw_secret = pair.partition(":")
            if not sep:
                return None
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id if self.clients.get(client_id) == secret and secret else None

    async def _introspect(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request"}, status=400)
        form = {k: str(v) for k, v in (await request.post()).items()}
        token = form.get("token", "")
        client = self._client(request, form)
        with self._lock:
            self.calls.append(Call(token, form, request.headers.get("Authorization"), client))
            mode = self.mode
            doc = self.responses.get(token, {"active": False})
            delay = self.delays.get(token, 0.0)
        if client is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        if mode == "error":
            return web.json_response({"error": "server_error"}, status=500)
        if mode == "garbage":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if mode == "slow":
            delay = self.slow_seconds
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(doc)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/introspect", self._introspect)
        return app


@pytest.fixture(scope="module")
def auth_server() -> Iterator[FakeAS]:
    fake = FakeAS(clients={CLIENT_ID: CLIENT_SECRET, POST_CLIENT_ID: POST_SECRET})
    fake.server = BackgroundApp(fake.make_app, name="introspection").start()
    try:
        yield fake
    finally:
        fake.server.close()


@pytest.fixture
def server(auth_server: FakeAS) -> Iterator[FakeAS]:
    """The module's server, put back to normal (and listening) after each test."""
    yield auth_server
    auth_server.mode = "ok"
    assert auth_server.server is not None
    auth_server.server.up()


@pytest.fixture(scope="module")
def extauthz_config(e2e_dir: Path, idp: DemoIdP, auth_server: FakeAS) -> Path:
    secrets = e2e_dir / "secrets"
    secrets.mkdir()
    (secrets / "client.secret").write_text(CLIENT_SECRET + "\n")
    (secrets / "wrong.secret").write_text("not-the-secret\n")
    common = {"endpoint": auth_server.endpoint, "timeout_seconds": TIMEOUT}
    return write_config(
        e2e_dir / "extauthz-introspection.yaml",
        {
            "version": 1,
            "settings": {"realm": REALM},
            "authenticators": {
                "opaque": {"introspection": {
                    **common, "client_id": CLIENT_ID,
                    "client_secret_file": str(secrets / "client.secret"),
                    "cache_max_ttl_seconds": 300, "negative_cache_ttl_seconds": 30,
                }},
                "opaque-post": {"introspection": {
                    **common, "client_id": POST_CLIENT_ID, "client_secret_env": SECRET_ENV,
                    "client_auth": "post", "cache_max_ttl_seconds": 0,
                    "negative_cache_ttl_seconds": 0,
                }},
                "wrong-client": {"introspection": {
                    **common, "client_id": CLIENT_ID,
                    "client_secret_file": str(secrets / "wrong.secret"),
                }},
                "demo-idp": {"jwt": {
                    "issuer": idp.issuer, "audiences": [idp.audience],
                    "algorithms": ["RS256"], "jwks": {"discovery": True},
                    "fetch_timeout_seconds": 0.5,
                }},
            },
            "routes": [
                {"name": "opaque", "match": {"prefix": "/opaque/"}, "authn": ["opaque"]},
                {"name": "opaque_scoped", "match": {"prefix": "/opaque-scoped/"},
                 "authn": ["opaque"], "authz": {"scopes_all": ["orders:write"]}},
                {"name": "opaque_post", "match": {"prefix": "/opaque-post/"},
                 "authn": ["opaque-post"]},
                {"name": "wrong_client", "match": {"prefix": "/wrong-client/"},
                 "authn": ["wrong-client"]},
                {"name": "mixed", "match": {"prefix": "/mixed/"},
                 "authn": ["demo-idp", "opaque"]},
                {"name": "mixed_reversed", "match": {"prefix": "/mixed-reversed/"},
                 "authn": ["opaque", "demo-idp"]},
            ],
        },
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(extauthz_config: Path, echo: BackgroundApp, e2e_dir: Path) -> Iterator[BodyStack]:
    running = start_env_stack(
        extauthz_config,
        echo_port=echo.port,
        log_dir=e2e_dir / "logs",
        source=ENVOY_CONFIG,  # the standard config: no body needed here
        env={SECRET_ENV: POST_SECRET},
    )
    try:
        yield running
    finally:
        running.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _down(server: FakeAS) -> None:
    assert server.server is not None
    server.server.down()


# -- allowed -----------------------------------------------------------------------------------


def test_active_token_is_allowed_with_its_identity(stack: BodyStack, server: FakeAS) -> None:
    token = server.active("alice", scope="orders:write orders:read")
    seen = upstream_headers(stack.get(OPAQUE, bearer(token)))
    assert seen["x-auth-subject"] == "alice"
    assert seen["x-auth-method"] == "introspection"
    assert seen["x-auth-consumer"] == "web-app"
    assert seen["x-auth-scopes"] == "orders:read orders:write"
    assert "authorization" not in seen  # the token never reaches the upstream
    # What the authorization server saw: our client, HTTP Basic with the id and secret
    # form-urlencoded first (RFC 6749 §2.3.1), and the token with its type hint.
    (call,) = server.calls_for(token)
    assert call.client == CLIENT_ID
    assert call.authorization is not None and call.authorization.startswith("Basic ")
    assert call.form == {"token": token, "token_type_hint": "access_token"}


def test_second_request_with_the_same_token_is_answered_from_the_cache(
    stack: BodyStack, server: FakeAS
) -> None:
    token = server.active("bob")
    for _ in range(3):
        assert upstream_headers(stack.get(OPAQUE, bearer(token)))["x-auth-subject"] == "bob"
    assert server.count(token) == 1


def test_concurrent_checks_of_one_token_share_one_introspection(
    stack: BodyStack, server: FakeAS
) -> None:
    token = server.active("carol")
    server.delays[token] = 0.2  # long enough for every check to arrive while it is in flight
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: stack.get(OPAQUE, bearer(token)), range(8)))
    assert [r.status for r in responses] == [200] * 8
    assert server.count(token) == 1


def test_subject_falls_back_to_client_id(stack: BodyStack, server: FakeAS) -> None:
    token = server.issue(active=True, client_id="batch-service", scope="jobs:run")
    seen = upstream_headers(stack.get(OPAQUE, bearer(token)))
    assert seen["x-auth-subject"] == "batch-service"
    assert seen["x-auth-consumer"] == "batch-service"


def test_client_auth_post_with_the_secret_from_the_environment(
    stack: BodyStack, server: FakeAS
) -> None:
    token = server.active("dave")
    for _ in range(2):
        assert upstream_headers(stack.get(POST, bearer(token)))["x-auth-subject"] == "dave"
    calls = server.calls_for(token)
    assert len(calls) == 2  # cache_max_ttl_seconds: 0 -> every check asks
    assert {c.client for c in calls} == {POST_CLIENT_ID}
    assert all(c.authorization is None for c in calls)
    assert calls[0].form["client_secret"] == POST_SECRET


# -- denied ----------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(stack: BodyStack) -> None:
    r = stack.get(OPAQUE)
    assert_denied(r, 401, "missing_credential")
    assert r.header_values("www-authenticate") == [BEARER]


def test_inactive_token_is_401_and_negatively_cached(stack: BodyStack, server: FakeAS) -> None:
    token = server.issue(active=False)
    for _ in range(2):
        r = stack.get(OPAQUE, bearer(token))
        assert_denied(r, 401, "inactive_token", challenge_contains=(BEARER, INVALID))
    assert server.count(token) == 1  # negative_cache_ttl_seconds: 30


def test_unknown_token_is_401_inactive(stack: BodyStack) -> None:
    r = stack.get(OPAQUE, bearer("at_never_issued_" + uuid.uuid4().hex))
    assert_denied(r, 401, "inactive_token", challenge_contains=(INVALID,))


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"active": True, "sub": "eve", "exp": 1_000_000_000}, "token_expired"),
        ({"active": True, "sub": "eve", "nbf": 4_000_000_000}, "token_not_yet_valid"),
        ({"active": True, "scope": "x"}, "missing_claim"),
    ],
    ids=["expired", "not-yet-valid", "no-subject"],
)
def test_active_but_unusable_token_is_401(
    stack: BodyStack, server: FakeAS, doc: dict[str, Any], reason: str
) -> None:
    assert_denied(stack.get(OPAQUE, bearer(server.issue(**doc))), 401, reason,
                  challenge_contains=(BEARER, INVALID))  # fmt: skip


def test_malformed_token_is_401_without_asking_the_server(stack: BodyStack, server: FakeAS) -> None:
    before = len(server.calls)
    r = stack.get(OPAQUE, {"authorization": "Bearer two words"})
    assert_denied(r, 401, "malformed_token", challenge_contains=(INVALID,))
    assert len(server.calls) == before


def test_missing_scope_is_403_insufficient_scope(stack: BodyStack, server: FakeAS) -> None:
    token = server.active("frank", scope="orders:read")
    r = stack.get(SCOPED, bearer(token))
    assert_denied(r, 403, "insufficient_scope")
    assert r.header_values("www-authenticate") == [
        f'{BEARER}, error="insufficient_scope", scope="orders:write"'
    ]
    # ... while a token with the scope passes the same route.
    token = server.active("frank", scope="orders:read orders:write")
    assert upstream_headers(stack.get(SCOPED, bearer(token)))["x-auth-subject"] == "frank"


# -- the endpoint failing: fail closed ---------------------------------------------------------


def _break(server: FakeAS, how: str) -> None:
    if how == "down":
        _down(server)
    else:
        assert how in MODES
        server.mode = how


@pytest.mark.parametrize("how", ["down", "error", "garbage", "slow"])
def test_endpoint_failure_is_503_and_never_cached(
    stack: BodyStack, server: FakeAS, how: str
) -> None:
    token = server.active("grace")
    _break(server, how)
    r = stack.get(OPAQUE, bearer(token))
    assert r.status != 200
    assert_denied(r, 503, "introspection_unavailable")
    # Failures are not cached: once the endpoint is back, the same token works.
    server.mode = "ok"
    assert server.server is not None
    server.server.up()
    assert upstream_headers(stack.get(OPAQUE, bearer(token)))["x-auth-subject"] == "grace"


def test_cached_token_survives_an_outage(stack: BodyStack, server: FakeAS) -> None:
    token = server.active("heidi")
    assert upstream_headers(stack.get(OPAQUE, bearer(token)))["x-auth-subject"] == "heidi"
    _down(server)
    assert upstream_headers(stack.get(OPAQUE, bearer(token)))["x-auth-subject"] == "heidi"


def test_refused_client_credentials_are_503_not_an_invalid_token(
    stack: BodyStack, server: FakeAS
) -> None:
    # The server answers 401 invalid_client to *us*: the client's token was never judged, so
    # the client must not be told its token is invalid.
    token = server.active("ivan")
    assert_denied(stack.get(WRONG_CLIENT, bearer(token)), 503, "introspection_unavailable")
    (call,) = server.calls_for(token)
    assert call.client is None


def test_revocation_takes_effect_when_the_cache_entry_ends(
    stack: BodyStack, server: FakeAS
) -> None:
    # The revocation delay is cache_max_ttl_seconds: a cached route keeps accepting a revoked
    # token; the uncached route refuses it at once.
    token = server.active("judy")
    assert upstream_headers(stack.get(OPAQUE, bearer(token)))["x-auth-subject"] == "judy"
    assert upstream_headers(stack.get(POST, bearer(token)))["x-auth-subject"] == "judy"
    server.revoke(token)
    assert upstream_headers(stack.get(OPAQUE, bearer(token)))["x-auth-subject"] == "judy"
    assert_denied(stack.get(POST, bearer(token)), 401, "inactive_token")


# -- one route, JWTs and opaque tokens (any-of) --------------------------------------------------


def test_jwt_on_the_mixed_route_takes_the_jwt_path(
    stack: BodyStack, server: FakeAS, idp: DemoIdP
) -> None:
    token = idp.mint("kate", scopes=["orders:read"])
    _down(server)  # the JWT path needs no introspection endpoint
    seen = upstream_headers(stack.get(MIXED, bearer(token)))
    assert seen["x-auth-subject"] == "kate"
    assert seen["x-auth-method"] == "jwt"
    assert server.count(token) == 0


def test_invalid_jwt_on_the_mixed_route_is_a_jwt_refusal(
    stack: BodyStack, server: FakeAS, idp: DemoIdP
) -> None:
    # A JWT-shaped token is the JWT verifier's to refuse; it must not be retried elsewhere.
    token = idp.mint("kate", expires_in=-600, issued_at=time.time() - 1200)
    r = stack.get(MIXED, bearer(token))
    assert_denied(r, 401, "token_expired", challenge_contains=(BEARER, INVALID))
    assert server.count(token) == 0


def test_no_token_on_the_mixed_route_is_a_bearer_challenge(stack: BodyStack) -> None:
    r = stack.get(MIXED)
    assert_denied(r, 401, "missing_credential")
    # Today one identical `Bearer realm=...` per bearer method (two lines); one would do.
    assert set(r.header_values("www-authenticate")) == {BEARER}


def test_opaque_token_on_the_mixed_route_goes_to_introspection(
    stack: BodyStack, server: FakeAS
) -> None:
    # Bearer dispatch (extauthz.authn.dispatch): a token not shaped like a JWT skips the JWT
    # verifier, which would otherwise claim it and refuse it as malformed_token.
    token = server.active("leo")
    r = stack.get(MIXED, bearer(token))
    seen = upstream_headers(r)
    assert seen["x-auth-subject"] == "leo"
    assert seen["x-auth-method"] == "introspection"
    assert server.count(token) == 1


def test_opaque_token_on_the_mixed_route_with_the_endpoint_down_is_503(
    stack: BodyStack, server: FakeAS
) -> None:
    token = server.active("leo")
    _down(server)
    assert_denied(stack.get(MIXED, bearer(token)), 503, "introspection_unavailable")


def test_opaque_token_on_the_reversed_mixed_route_is_allowed(
    stack: BodyStack, server: FakeAS
) -> None:
    token = server.active("mia")
    seen = upstream_headers(stack.get(MIXED_REVERSED, bearer(token)))
    assert seen["x-auth-method"] == "introspection"


def test_jwt_on_the_reversed_mixed_route_takes_the_jwt_path(
    stack: BodyStack, server: FakeAS, idp: DemoIdP
) -> None:
    # Introspection listed first: a JWT must still be verified locally, not sent to the
    # authorization server (which does not know it: inactive_token).
    token = idp.mint("nina")
    r = stack.get(MIXED_REVERSED, bearer(token))
    seen = upstream_headers(r)
    assert seen["x-auth-method"] == "jwt"
    assert server.count(token) == 0
