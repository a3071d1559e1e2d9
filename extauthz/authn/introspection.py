"""Opaque bearer tokens checked at an OAuth 2.0 Token Introspection endpoint (RFC 7662).

One :class:`IntrospectionAuthenticator` talks to one endpoint::

    token    read from ``source`` (default ``Authorization: Bearer``); absent = None.
             Empty, longer than 16 KiB or not visible ASCII = 401 malformed_token.
    cache    keyed by SHA-256(token) (the token itself is never stored, logged or a label):
               active   until min(exp, now + cache_max_ttl_seconds)
               refused  (inactive, wrong aud/iss, ...) for negative_cache_ttl_seconds
             endpoint failures are never cached. A reload keeps the cache when the endpoint,
             client and checks are unchanged (a ReloadState cell, extauthz.authn.reload_state).
    request  POST application/x-www-form-urlencoded ``token`` (+ ``token_type_hint``) with the
             client authenticated by HTTP Basic (RFC 6749 §2.3.1: id and secret form-encoded,
             then base64) or ``client_id``/``client_secret`` form fields (``client_auth: post``).
             One aiohttp ClientSession per authenticator (created in ``start()``, closed in
             ``close()``), at most ``max_concurrent_requests`` connections, the whole exchange
             bounded by ``timeout_seconds`` (default 0.5 s, below the shipped Envoy timeout),
             under the process's outbound policy (extauthz.outbound: https off loopback, CA
             bundle, proxies), redirects never followed (the client secret must not travel
             anywhere else). Concurrent checks of one token share one request.
    answer   HTTP 200 with a JSON object whose ``active`` is a boolean, else the endpoint is
             treated as down: 503 introspection_unavailable (fail closed, never allow). Same
             for connection errors, timeouts, 5xx, 4xx (our client credentials are wrong) and
             malformed ``exp``/``nbf``/``scope``/``aud``/``iss`` members.
             active: false                      401 inactive_token
             now >= exp                         401 token_expired
             now < nbf                          401 token_not_yet_valid
             issuer configured, iss differs     401 wrong_issuer
             audiences configured, no overlap   401 wrong_audience
             neither sub nor client_id          401 missing_claim

Identity: method ``introspection``; subject = ``sub``, else ``client_id``; consumer =
``client_id``; scopes from ``scope`` (space-separated, or an array); ``expires_at`` = ``exp``;
claims = the response without ``active``.

:func:`looks_like_jwt` lets a route that accepts both JWTs and opaque tokens send each kind to the
right verifier.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import math
import re
import sys
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from extauthz import tracing
from extauthz.authn.base import Authenticator, BearerScopeChallenge, Challenge
from extauthz.authn.cache import CredentialCache, Shared, credential_key
from extauthz.authn.certbinding import CertBinding
from extauthz.authn.context import BuildContext
from extauthz.authn.reload_state import ReloadState
from extauthz.authn.secrets import load_secret
from extauthz.authn.sources import Source, SourceCredentials
from extauthz.clock import Clock
from extauthz.config.schema import IntrospectionSpec
from extauthz.errors import AuthenticationError, DependencyUnavailable, Reason
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundError, OutboundPolicy
from extauthz.types import AuthMethod, Identity, RequestView

log = logging.getLogger("extauthz.introspection")

#: longest token accepted (bounds what an unauthenticated request can make us send)
MAX_TOKEN_LENGTH = 16 * 1024
#: longest introspection response read
MAX_RESPONSE_BYTES = 1024 * 1024

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+\Z")
_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")

_DESCRIPTIONS: Mapping[Reason, str] = {
    Reason.MALFORMED_TOKEN: "malformed token",
    Reason.INACTIVE_TOKEN: "token is not active",
    Reason.TOKEN_EXPIRED: "token expired",
    Reason.TOKEN_NOT_YET_VALID: "token not yet valid",
    Reason.WRONG_ISSUER: "token issuer not accepted",
    Reason.WRONG_AUDIENCE: "token audience not accepted",
    Reason.MISSING_CLAIM: "token lacks a subject",
}


def looks_like_jwt(token: str) -> bool:
    """True when ``token`` has the shape of a compact JWS: three base64url segments (the first two
    non-empty) whose first decodes to a JSON object with a string ``alg``.

    A shape test for routing only, not a verification: a token that looks like a JWT goes to the
    JWT verifier (which may still refuse it), anything else to introspection.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        return False
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return False
    if not all(_B64URL.match(part) for part in parts):
        return False
    header = parts[0]
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)


class _EndpointError(Exception):
    """The endpoint did not give a usable answer (the message is for logs, never the client)."""


@dataclass(frozen=True, slots=True)
class _Result:
    """One introspection outcome: an identity, or the reason the token is refused."""

    identity: Identity | None
    reason: Reason = Reason.INACTIVE_TOKEN
    description: str = ""


def _number(doc: Mapping[str, Any], name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _EndpointError(f"member {name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _EndpointError(f"member {name} out of range") from None
    if not math.isfinite(number):
        raise _EndpointError(f"member {name} is not finite")
    return number


def _string_or_list(doc: Mapping[str, Any], name: str) -> list[str] | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _EndpointError(f"member {name} is neither a string nor an array of strings")


def _text(doc: Mapping[str, Any], name: str) -> str | None:
    """A non-empty string member, else None."""
    value = doc.get(name)
    return value if isinstance(value, str) and value else None


#: members whose value is (nearly) unique per token: not worth a shared-value table slot
_UNIQUE_MEMBERS = frozenset({"sub", "jti", "username", "sid", "exp", "iat", "nbf"})


def _is_refusal(result: _Result) -> bool:
    """A refused token (cached for ``negative_cache_ttl_seconds`` only)."""
    return result.identity is None


def _scopes(doc: Mapping[str, Any]) -> frozenset[str]:
    value = doc.get("scope")
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise _EndpointError("member scope is neither a string nor an array of strings")


@dataclass(slots=True)
class _CarriedAnswers:
    """The answer cache of the newest authenticator with one binding (a ReloadState cell)."""

    cache: CredentialCache[_Result] | None = None
    #: the cache ``cache`` replaced, until its authenticator closes (a configuration that fails
    #: to start hands the cell back to it: those answers keep serving)
    replaced: CredentialCache[_Result] | None = None


def _binding(spec: IntrospectionSpec) -> Hashable:
    """What decides what a cached answer means: the cache is carried over a reload only when
    all of it is unchanged (cache sizes, timeouts and the secret do not matter: an entry is the
    endpoint's answer about one token, already checked against these)."""
    audiences = None if spec.audiences is None else tuple(spec.audiences)
    return (spec.endpoint, spec.client_id, audiences, spec.issuer, spec.token_type_hint)


class IntrospectionAuthenticator(BearerScopeChallenge, SourceCredentials):
    """Verifies opaque bearer tokens at an RFC 7662 endpoint (module docstring: exact rules)."""

    kind: AuthMethod = AuthMethod.INTROSPECTION

    def __init__(
        self,
        name: str,
        spec: IntrospectionSpec,
        client_secret: str,
        *,
        clock: Clock,
        metrics: Metrics,
        realm: str = "extauthz",
        policy: OutboundPolicy | None = None,
        reload_state: ReloadState | None = None,
    ) -> None:
        self.name = name
        self._spec = spec
        self._policy = policy if policy is not None else OutboundPolicy()
        self._policy.check_url(spec.endpoint, "endpoint")
        self._endpoint = spec.endpoint
        self._clock = clock
        self._source = Source.from_spec(spec.source)
        #: RFC 8705 §3.2: the response's cnf x5t#S256 binds the token to a client certificate
        self._binding = CertBinding(
            spec.certificate_binding,
            lambda reason, description, detail: AuthenticationError(
                reason, description, detail, authenticator=self.name),
        )
        self._form: dict[str, str] = {}
        self._auth_headers: dict[str, str] = {"Accept": "application/json"}
        if spec.token_type_hint:
            self._form["token_type_hint"] = spec.token_type_hint
        if spec.client_auth == "basic":
            pair = f"{quote_plus(spec.client_id)}:{quote_plus(client_secret)}"
            encoded = base64.b64encode(pair.encode("utf-8")).decode("ascii")
            self._auth_headers["Authorization"] = f"Basic {encoded}"
        else:
            self._form["client_id"] = spec.client_id
            self._form["client_secret"] = client_secret
        self._audiences = frozenset(spec.audiences or ())
        #: answers by SHA-256 of the token; concurrent checks of one token share one request
        self._cache: CredentialCache[_Result] = CredentialCache(
            spec.cache_size, clock=clock, max_ttl=spec.cache_max_ttl_seconds,
            negative_ttl=spec.negative_cache_ttl_seconds, refused=_is_refusal,
            metrics=metrics, label="introspection", coalesce=True)
        self._session: aiohttp.ClientSession | None = None
        self._shared_scopes: Shared[frozenset[str]] = Shared(1024)
        self._shared_time: Shared[float] = Shared()
        self._shared_text: Shared[str] = Shared()
        self._init_credentials(Challenge("Bearer", (("realm", realm),)), (self._source,))
        self._init_bearer_scope(realm)
        state = reload_state if reload_state is not None else ReloadState()
        self._carried = state.cell(self.kind, _binding(spec), _CarriedAnswers, _CarriedAnswers)

    @classmethod
    def from_spec(
        cls, name: str, spec: IntrospectionSpec, ctx: BuildContext
    ) -> IntrospectionAuthenticator:
        """Build from configuration: reads the client secret now (``ValueError`` names it)."""
        raw = load_secret(
            file=spec.client_secret_file, env=spec.client_secret_env, base_dir=ctx.base_dir
        )
        try:
            secret = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("client secret is not UTF-8 text") from None
        return cls(
            name, spec, secret, clock=ctx.clock, metrics=ctx.metrics, realm=ctx.settings.realm,
            policy=ctx.outbound, reload_state=ctx.reload_state,
        )

    # ----------------------------------------------------------------------------- lifecycle

    def _new_session(self) -> aiohttp.ClientSession:
        return self._policy.session(
            self._spec.timeout_seconds, limit=self._spec.max_concurrent_requests
        )

    def _adopt_answers(self) -> None:
        """On a reload, keep the answers of the authenticator this one replaces (same endpoint,
        client and checks, whatever its name: the ReloadState cell of :func:`_binding`), so an
        endpoint outage during a reload does not turn every cached token into a 503. TTLs were
        set when each answer arrived and are capped to this configuration's (shorter) ones;
        nothing lives longer than either allows. From now on this authenticator's answers are
        the ones a later configuration takes over."""
        carried = self._carried
        previous = carried.cache
        if previous is self._cache:
            return
        carried.cache, carried.replaced = self._cache, previous
        if previous is not None:
            self._cache.adopt(previous)

    async def start(self) -> None:
        self._adopt_answers()  # before any await: the old snapshot still serves until the swap
        if self._session is None or self._session.closed:
            self._session = self._new_session()

    async def close(self) -> None:
        carried = self._carried
        if carried.replaced is self._cache:  # replaced for good: forget these answers
            carried.replaced = None
        elif carried.cache is self._cache and carried.replaced is not None:
            # this configuration failed to start: the answers it replaced keep serving
            carried.cache, carried.replaced = carried.replaced, None
        # The answers stay: the authenticator that replaces this one may adopt them.
        self._cache.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------------------- checking

    def _fail(self, reason: Reason, description: str = "") -> AuthenticationError:
        return AuthenticationError(
            reason, description or _DESCRIPTIONS.get(reason, ""), authenticator=self.name
        )

    async def authenticate(self, view: RequestView) -> Identity | None:
        token = self._source.read(view)
        if token is None:
            return None
        if not token or len(token) > MAX_TOKEN_LENGTH or not _VISIBLE_ASCII.match(token):
            raise self._fail(Reason.MALFORMED_TOKEN)
        key = credential_key(token)
        result = await self._cache.through(
            key, self._clock(), functools.partial(self._introspect, token, key))
        identity = self._apply(result)
        self._binding.check(identity.claims, view)
        return identity

    def _apply(self, result: _Result) -> Identity:
        identity = result.identity
        if identity is None:
            raise self._fail(result.reason, result.description)
        if identity.expires_at is not None and self._clock() >= identity.expires_at:
            raise self._fail(Reason.TOKEN_EXPIRED)
        return identity

    async def _introspect(self, token: str, key: bytes) -> tuple[_Result, float | None]:
        """Ask the endpoint; returns the outcome and the token's own end (for the cache)."""
        tag = key.hex()[:12]  # correlates log lines of one token without revealing it
        try:
            doc = await self._post(token)
            result = self._evaluate(doc)
        except _EndpointError as exc:
            log.warning("introspection %s (token %s): %s", self.name, tag, exc)
            raise DependencyUnavailable(
                Reason.INTROSPECTION_UNAVAILABLE, "token introspection unavailable"
            ) from None
        identity = result.identity
        return result, identity.expires_at if identity is not None else None

    @tracing.outbound_span("introspection",
                           lambda self, _token: {"url.full": tracing.safe_url(self._endpoint)})
    async def _post(self, token: str) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            await self.start()
        session = self._session
        if session is None:  # pragma: no cover - start() always sets it
            raise _EndpointError("no HTTP session")
        form = {"token": token, **self._form}
        try:
            status, body = await self._policy.fetch(
                session, "POST", self._endpoint, timeout=self._spec.timeout_seconds,
                max_bytes=MAX_RESPONSE_BYTES, headers=self._auth_headers, data=form,
            )
        except OutboundError as exc:
            raise _EndpointError(str(exc)) from None
        if status != 200:
            raise _EndpointError(f"HTTP status {status}")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise _EndpointError("response is not JSON") from None
        if not isinstance(doc, dict):
            raise _EndpointError("response is not a JSON object")
        return doc

    def _evaluate(self, doc: dict[str, Any]) -> _Result:
        """The outcome for one response (``_EndpointError`` when it is not a usable answer)."""
        now = self._clock()
        active = doc.get("active")
        if not isinstance(active, bool):
            raise _EndpointError("member active is not a boolean")
        if not active:
            return _Result(None, Reason.INACTIVE_TOKEN)
        exp = _number(doc, "exp")
        nbf = _number(doc, "nbf")
        audiences = _string_or_list(doc, "aud")
        scopes = _scopes(doc)
        iss = _optional_string(doc, "iss")
        subject, consumer = _text(doc, "sub"), _text(doc, "client_id")
        refused = (self._validate_exp(exp, now) or self._validate_nbf(nbf, now)
                   or self._validate_iss(iss) or self._validate_aud(audiences)
                   or _validate_subject(subject, consumer))
        if refused is not None:
            return _Result(None, refused)
        return _Result(Identity(
            method=self.kind,
            subject=subject or consumer or "",
            authenticator=self.name,
            consumer=self._shared_text(consumer) if consumer is not None else None,
            scopes=self._shared_scopes(scopes),
            claims=MappingProxyType(self._shared_claims(doc)),
            expires_at=self._shared_time(exp) if exp is not None else None,
        ))

    def _shared_claims(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The answer's members as cached: names and short repeated values (iss, aud,
        client_id, scope...) are held once, not once per token (docs/memory.md)."""
        share = self._shared_text
        return {sys.intern(k): share(v) if type(v) is str and len(v) <= 64
                and k not in _UNIQUE_MEMBERS else v for k, v in doc.items() if k != "active"}

    @staticmethod
    def _validate_exp(exp: float | None, now: float) -> Reason | None:
        return Reason.TOKEN_EXPIRED if exp is not None and now >= exp else None

    @staticmethod
    def _validate_nbf(nbf: float | None, now: float) -> Reason | None:
        return Reason.TOKEN_NOT_YET_VALID if nbf is not None and now < nbf else None

    def _validate_iss(self, iss: str | None) -> Reason | None:
        issuer = self._spec.issuer
        return Reason.WRONG_ISSUER if issuer is not None and iss != issuer else None

    def _validate_aud(self, audiences: list[str] | None) -> Reason | None:
        if self._audiences and not self._audiences.intersection(audiences or ()):
            return Reason.WRONG_AUDIENCE
        return None

    # ----------------------------------------------------------------------------- protocol


def _optional_string(doc: dict[str, Any], member: str) -> str | None:
    value = doc.get(member)
    if value is not None and not isinstance(value, str):
        raise _EndpointError(f"member {member} is not a string")
    return value


def _validate_subject(subject: str | None, consumer: str | None) -> Reason | None:
    """An identity needs a subject: ``sub`` or, for client credentials, ``client_id``."""
    return Reason.MISSING_CLAIM if (subject or consumer) is None else None


_: type[Authenticator] = IntrospectionAuthenticator  # static conformance check (mypy)
