"""A configuration with every authenticator kind, and the credentials that pass it.

Used by the request-limit tests, the parser property tests and the fuzz run of the full ``Check``
path (``tests/servicer/test_fuzz_check.py``): one place that knows how to set up API keys, a JWT
issuer (inline JWKS), mTLS (trust bundle + XFCC), Basic (htpasswd, {SHA} and bcrypt), HMAC (RFC 9421
and cavage) and token introspection, plus policies that read claims, headers, query parameters,
path parameters and CEL.

Routes (the prefix is the route name)::

    /public/   public
    /keys/     api_key (header x-api-key, query api_key, cookie ak), scope read
    /jwt/      jwt; claims, headers and CEL rules
    /bearer/   jwt or introspection (bearer dispatch by token shape)
    /mtls/     mtls (peer certificate or XFCC)
    /basic/    basic
    /hmac/     hmac RFC 9421
    /cavage/   hmac draft-cavage
    /all/      mtls AND api_key
    /any/      api_key, basic, hmac, jwt (first present decides)
    /users/{user_id}/docs   jwt; equal(param user_id, claim sub) or scope admin
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import yaml
from aiohttp import web

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.demo.background import BackgroundApp
from extauthz.keys import hash_api_key
from tests.support.certs import Issued, TestCA
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey, claims, ec_key, jwks, mint

API_KEY = "eak_allkinds-test-key-0123456789abcdef"
HMAC_SECRET = b"allkinds-hmac-secret-of-at-least-32-bytes!"
BASIC_USER, BASIC_PASSWORD = "alice", "correct horse"
BCRYPT_USER, BCRYPT_PASSWORD = "bob", "battery staple"
SPIFFE_ID = "spiffe://example.org/ns/fuzz/sa/client"

T = TypeVar("T")

ROUTES = ("public", "keys", "jwt", "bearer", "mtls", "basic", "hmac", "cavage", "all", "any")


@dataclass(frozen=True)
class AllKinds:
    """The written configuration and what the tests need to pass it."""

    config: Path
    jwt_key: SigningKey
    ca: TestCA
    leaf: Issued

    def token(self, **extra: Any) -> str:
        """A valid JWT for the configured issuer (``extra`` adds or overrides claims)."""
        return mint(self.jwt_key, claims(now=time.time(), **extra))


def config_data(
    *, introspection_endpoint: str, limits: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The configuration as a dict (files it names are written by :func:`write_all_kinds`)."""
    settings: dict[str, Any] = {"unmatched": "deny"}
    if limits:
        settings["limits"] = dict(limits)
    hmac_key = {"id": "k1", "secret_file": "hmac.secret", "scopes": ["read"]}
    return {
        "version": 1,
        "settings": settings,
        "authenticators": {
            "keys": {"api_key": {"sources": [
                {"header": "x-api-key"}, {"query": "api_key"}, {"cookie": "ak"}]}},
            "idp": {"jwt": {
                "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
                "jwks": {"inline": jwks(ec_key())},
                "claims_to_headers": {
                    "email": "x-auth-email", "realm_access.roles": "x-auth-roles",
                },
                "leeway_seconds": 5,
            }},
            "certs": {"mtls": {"trust_bundles": ["ca.pem"], "xfcc": True}},
            "users": {"basic": {"htpasswd_file": "htpasswd", "hash_workers": 1}},
            "signed": {"hmac": {"keys": [hmac_key]}},
            "signed-cavage": {"hmac": {"profile": "cavage", "keys": [hmac_key],
                                       "required_components": ["@method", "@path"]}},
            "opaque": {"introspection": {
                "endpoint": introspection_endpoint, "client_id": "extauthz",
                "client_secret_file": "introspection.secret", "timeout_seconds": 0.5,
                "cache_max_ttl_seconds": 0, "negative_cache_ttl_seconds": 0,
            }},
        },
        "consumers": [{"name": "fuzzer", "keys": [
            {"id": "fk1", "hash": hash_api_key(API_KEY), "scopes": ["read"]}]}],
        "routes": [
            {"name": "public", "match": {"prefix": "/public/"}, "public": True},
            {"name": "keys", "match": {"prefix": "/keys/"}, "authn": ["keys"],
             "authz": {"scopes_all": ["read"]}},
            {"name": "jwt", "match": {"prefix": "/jwt/"}, "authn": ["idp"], "authz": {"rules": [
                {"any_of": [
                    {"claim": {"path": "realm_access.roles", "contains": "admin"}},
                    {"header": {"name": "x-tenant", "regex": "[a-z]{1,16}"}},
                    {"query": {"name": "q", "exists": True}},
                ]},
                {"cel": '!("x-deny" in request.headers) && request.method != "DELETE"'},
                {"source": {"deny": ["10.66.0.0/16"]}},
            ]}},
            {"name": "bearer", "match": {"prefix": "/bearer/"}, "authn": ["idp", "opaque"]},
            {"name": "mtls", "match": {"prefix": "/mtls/"}, "authn": ["certs"]},
            {"name": "basic", "match": {"prefix": "/basic/"}, "authn": ["users"]},
            {"name": "hmac", "match": {"prefix": "/hmac/"}, "authn": ["signed"]},
            {"name": "cavage", "match": {"prefix": "/cavage/"}, "authn": ["signed-cavage"]},
            {"name": "all", "match": {"prefix": "/all/"}, "authn": ["certs", "keys"],
             "authn_mode": "all_of"},
            {"name": "any", "match": {"prefix": "/any/"},
             "authn": ["keys", "users", "signed", "idp"]},
            {"name": "docs", "match": {"template": "/users/{user_id}/docs"}, "authn": ["idp"],
             "authz": {"rules": [{"any_of": [
                 {"equal": {"param": "user_id", "claim": "sub"}},
                 {"scopes_all": ["admin"]},
             ]}]}},
        ],
    }


def write_all_kinds(
    directory: Path,
    *,
    introspection_endpoint: str = "http://127.0.0.1:9/introspect",
    limits: Mapping[str, int] | None = None,
) -> AllKinds:
    """Write the configuration and its files (CA bundle, htpasswd, secrets) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    ca = TestCA.create("allkinds root", now=now)
    leaf = ca.issue(uris=[SPIFFE_ID], now=now)
    ca.write_bundle(directory / "ca.pem")
    sha = base64.b64encode(hashlib.sha1(BASIC_PASSWORD.encode()).digest()).decode()
    hashed = bcrypt.hashpw(BCRYPT_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (directory / "htpasswd").write_text(f"{BASIC_USER}:{{SHA}}{sha}\n{BCRYPT_USER}:{hashed}\n")
    (directory / "hmac.secret").write_bytes(HMAC_SECRET)
    (directory / "introspection.secret").write_text("introspection-client-secret")
    data = config_data(introspection_endpoint=introspection_endpoint, limits=limits)
    config = directory / "extauthz.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return AllKinds(config=config, jwt_key=ec_key(), ca=ca, leaf=leaf)


def check_request(
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    host: str = "api.example.com",
    body: bytes = b"",
    raw_headers: list[tuple[str, bytes]] | None = None,
    certificate: str = "",
    context_extensions: Mapping[str, str] | None = None,
    source_address: str = "192.0.2.10",
) -> Any:
    """A CheckRequest as Envoy sends it (pseudo-headers included; ``raw_headers``: the
    ``encode_raw_headers`` form in ``header_map`` instead of ``headers``)."""
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    http = attrs.request.http
    http.method, http.path, http.host, http.scheme = method, path, host, "http"
    http.protocol = "HTTP/1.1"
    if raw_headers is not None:
        for key, value in raw_headers:
            http.header_map.headers.add(key=key, raw_value=value)
    else:
        http.headers.update({":method": method, ":path": path, ":authority": host,
                             ":scheme": "http", **(headers or {})})
    if body:
        http.raw_body = body
    attrs.source.address.socket_address.address = source_address
    attrs.source.certificate = certificate
    attrs.context_extensions.update(context_extensions or {})
    return req


class IntrospectionStub:
    """An RFC 7662 endpoint that answers whatever the test set last (status, body bytes).

    Runs in a background thread (:class:`BackgroundApp`), so checks on any event loop can call
    it. ``requests`` counts the calls.
    """

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"active": true, "sub": "opaque-user", "scope": "read"}'
        self.requests = 0
        #: when set, only these tokens get ``body``; any other is ``{"active": false}``
        self.valid_tokens: frozenset[str] | None = None
        self.app = BackgroundApp(self._make_app, name="introspection-stub")

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/introspect", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        form = await request.post()
        body = self.body
        if self.valid_tokens is not None and form.get("token") not in self.valid_tokens:
            body = b'{"active": false}'
        return web.Response(status=self.status, body=body, content_type="application/json")

    @property
    def endpoint(self) -> str:
        return f"{self.app.base_url}/introspect"

    def __enter__(self) -> IntrospectionStub:
        self.app.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.close()


class Running:
    """The all-kinds snapshot started on an event loop of its own, for synchronous property tests
    (``hypothesis`` drives plain functions): :meth:`run` runs a coroutine on that loop.

    ``with Running(kinds) as running: running.run(running.engine.check(view))``
    """

    def __init__(self, kinds: AllKinds) -> None:
        from extauthz.metrics import Metrics
        from extauthz.pipeline import Engine
        from extauthz.snapshot import load_snapshot

        self.loop = asyncio.new_event_loop()
        self.metrics = Metrics()
        self.snapshot = load_snapshot(kinds.config, self.metrics)
        self.engine = Engine(self.metrics, self.snapshot)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def __enter__(self) -> Running:
        self.run(self.snapshot.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.snapshot.close())
        finally:
            self.loop.close()
