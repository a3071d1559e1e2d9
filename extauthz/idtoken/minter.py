"""Mint, sign and cache the identity token of an allowed request.

Token (JWS compact, header ``{"alg", "kid", "typ": "JWT"}``)::

    iss       settings.identity_token.issuer
    aud       the route's configured audience, else the route's name
    sub       the authenticated subject
    consumer  the consumer name (when the credential names one)
    methods   the authentication methods that succeeded, e.g. ["mtls", "jwt"]
    scope     the granted scopes, space-separated (RFC 8693 style; absent when none)
    <claims>  the configured claims copied from the credential (JWT / introspection)
    iat, exp  now and now + ttl_seconds, but never later than the credential's own expiry
    jti       random, 128 bits

Cache: a token is reused for the same identity (every member above but the times and ``jti``)
and audience while at least half of its lifetime is left, so a busy caller costs one signature
per ``ttl_seconds / 2`` instead of one per request. A reused token carries the ``jti`` of its
first mint: ``jti`` identifies a minted token, not a request (docs/identity-token.md).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from extauthz.authn.lru import TtlLru
from extauthz.clock import Clock, system_clock
from extauthz.config.idtoken_schema import IdentityTokenSpec, RouteIdentityTokenSpec
from extauthz.errors import ConfigIssue
from extauthz.idtoken.keys import SigningKey, jwks_document, load_key
from extauthz.metrics import Metrics
from extauthz.types import Identity

log = logging.getLogger("extauthz.idtoken")

#: the part of a token's lifetime during which it is reused from the cache
_REUSE_FRACTION = 0.5
#: a copied claim whose JSON is longer than this is left out of the token
MAX_CLAIM_CHARS = 2048
#: identity headers the pipeline sets itself (after the prefix): the token cannot take one
_IDENTITY_HEADERS = ("subject", "method", "methods", "consumer", "scopes")


@dataclass(frozen=True, slots=True)
class RouteTokenPolicy:
    """What one route's token says: its audience and the credential claims it copies."""

    audience: str
    claims: tuple[str, ...]


class IdentityTokens:
    """The identity tokens of one configuration snapshot: signing keys, per-route policy, cache.

    Built by :func:`build_identity_tokens`; used by the pipeline (:meth:`header_for`) and the
    admin endpoint (:meth:`jwks`, :meth:`discovery`).
    """

    def __init__(
        self,
        spec: IdentityTokenSpec,
        keys: tuple[SigningKey, ...],
        routes: Mapping[str, RouteTokenPolicy],
        *,
        clock: Clock = system_clock,
        files: tuple[Path, ...] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.spec = spec
        self.header = spec.header
        self.keys = keys
        self.signing = keys[0]
        self.routes = dict(routes)
        self.files = files
        self._clock = clock
        self._ttl = spec.ttl_seconds
        self._cache: TtlLru[tuple[Any, ...], tuple[str, float]] = TtlLru(spec.cache_max_entries)
        #: signatures made (the cache's misses): the cost a cache hit saves
        self.minted = 0
        metrics = metrics if metrics is not None else Metrics()
        #: extauthz_cache_requests{cache="identity_token"}: hit = reused, miss = signed
        self._hit = metrics.cache_requests.labels(cache="identity_token", result="hit")
        self._miss = metrics.cache_requests.labels(cache="identity_token", result="miss")

    def header_for(self, route: str, identity: Identity) -> tuple[str, str] | None:
        """``(header, token)`` for an allowed request of ``identity`` on ``route``; None when
        the route mints no token."""
        policy = self.routes.get(route)
        if policy is None:
            return None
        return self.header, self.token(policy, identity)

    def token(self, policy: RouteTokenPolicy, identity: Identity) -> str:
        """The (possibly cached) token of ``identity`` for ``policy``'s audience."""
        now = self._clock()
        selected = _selected_claims(identity, policy.claims)
        key = (policy.audience, identity.subject, identity.consumer or "",
               tuple(m.value for m in identity.all_methods), identity.scopes,
               json.dumps(selected, sort_keys=True, default=str) if selected else "")
        cached = self._cache.get(key, now)
        if cached is not None and (identity.expires_at is None
                                   or cached[1] <= identity.expires_at):
            self._hit.inc()
            return cached[0]
        self._miss.inc()
        exp = now + self._ttl
        if identity.expires_at is not None:
            exp = min(exp, identity.expires_at)
        token = self._sign(policy.audience, identity, selected, now, exp)
        self.minted += 1
        reuse_until = min(now + self._ttl * _REUSE_FRACTION, exp)
        if reuse_until > now:
            self._cache.put(key, (token, exp), reuse_until)
        return token

    def _sign(self, audience: str, identity: Identity, selected: dict[str, Any],
              now: float, exp: float) -> str:
        payload: dict[str, Any] = dict(selected)
        payload.update({
            "iss": self.spec.issuer,
            "aud": audience,
            "sub": identity.subject,
            "methods": [m.value for m in identity.all_methods],
            "iat": int(now),
            "exp": int(exp),
            "jti": secrets.token_urlsafe(16),
        })
        if identity.consumer:
            payload["consumer"] = identity.consumer
        if identity.scopes:
            payload["scope"] = " ".join(sorted(identity.scopes))
        key = self.signing
        return jwt.encode(payload, key.private, algorithm=key.alg,
                          headers={"kid": key.kid, "typ": "JWT"})

    def jwks(self) -> dict[str, Any]:
        """The public keys (every configured key: the signing one and those still published)."""
        return jwks_document(self.keys)

    def discovery(self, jwks_uri: str) -> dict[str, Any]:
        """An OpenID-Provider-style metadata document (issuer, jwks_uri, algorithms)."""
        return {
            "issuer": self.spec.issuer,
            "jwks_uri": self.spec.jwks_uri or jwks_uri,
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }


def _selected_claims(identity: Identity, names: tuple[str, ...]) -> dict[str, Any]:
    """The configured claims the credential carries (absent ones are left out, and so is a
    value over :data:`MAX_CLAIM_CHARS` of JSON: the token must fit in a request header)."""
    if not names or not identity.claims:
        return {}
    claims = identity.claims
    selected = {}
    for name in names:
        if name in claims:
            value = claims[name]
            if len(json.dumps(value, default=str)) <= MAX_CLAIM_CHARS:
                selected[name] = value
    return selected


#: (route name, config path, public, the route's ``identity_token``) per route
RouteEntry = tuple[str, str, bool, RouteIdentityTokenSpec | None]
_WHERE = "settings.identity_token"


def build_identity_tokens(
    spec: IdentityTokenSpec | None,
    routes: list[RouteEntry],
    base_dir: Path,
    issues: list[ConfigIssue],
    *,
    clock: Clock = system_clock,
    identity_prefix: str = "",
    metrics: Metrics | None = None,
) -> IdentityTokens | None:
    """Compile ``settings.identity_token`` and every route's ``identity_token``.

    ``routes``: (name, config path, public, spec) per route; ``identity_prefix``:
    ``settings.identity_header_prefix``. Problems are appended to
    ``issues`` (located); returns None when the feature is off or a problem was found.
    """
    if spec is None:
        for _, at, _, route_spec in routes:
            if route_spec is not None and route_spec.enabled:
                issues.append(ConfigIssue(f"{at}.identity_token",
                                          f"needs {_WHERE} (issuer and signing keys)"))
        return None
    before = len(issues)
    if identity_prefix and spec.header in {identity_prefix + h for h in _IDENTITY_HEADERS}:
        issues.append(ConfigIssue(f"{_WHERE}.header",
                                  f"{spec.header} is an identity header extauthz sets itself"))
    keys, files = _load_keys(spec, base_dir, issues)
    policies = _route_policies(spec, routes, issues)
    if len(issues) > before:
        return None
    return IdentityTokens(spec, keys, policies, clock=clock, files=files, metrics=metrics)


def _load_keys(spec: IdentityTokenSpec, base_dir: Path, issues: list[ConfigIssue]
               ) -> tuple[tuple[SigningKey, ...], tuple[Path, ...]]:
    """The signing keys (the first signs; the others are only published) and the files they
    were read from (watched for a reload)."""
    keys: list[SigningKey] = []
    files: list[Path] = []
    for i, key_spec in enumerate(spec.keys):
        try:
            key, path = load_key(key_spec.file, key_spec.env, base_dir, key_spec.kid)
        except ValueError as exc:
            issues.append(ConfigIssue(f"{_WHERE}.keys[{i}]", str(exc)))
            continue
        if any(k.kid == key.kid for k in keys):
            issues.append(ConfigIssue(f"{_WHERE}.keys[{i}]",
                                      f"the same key as another ({key.kid})"))
            continue
        keys.append(key)
        if path is not None:
            files.append(path)
    return tuple(keys), tuple(files)


def _route_policies(spec: IdentityTokenSpec, routes: list[RouteEntry],
                    issues: list[ConfigIssue]) -> dict[str, RouteTokenPolicy]:
    """The token policy of every route that mints one (``all_routes`` or its own
    ``identity_token.enabled``); a public route cannot."""
    policies: dict[str, RouteTokenPolicy] = {}
    for name, at, public, route_spec in routes:
        enabled = spec.all_routes if route_spec is None else route_spec.enabled
        if not enabled:
            continue
        if public:
            if route_spec is not None:
                issues.append(ConfigIssue(f"{at}.identity_token",
                                          "a public route has no identity to put in a token"))
            continue
        audience = (route_spec.audience if route_spec is not None else None) or name
        claims = route_spec.claims if route_spec is not None else None
        policies[name] = RouteTokenPolicy(
            audience=audience, claims=tuple(spec.claims if claims is None else claims))
    return policies
