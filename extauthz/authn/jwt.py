"""Bearer JWT authentication (RFC 7519 / RFC 7515 compact JWS / RFC 6750 bearer usage).

One :class:`JwtAuthenticator` verifies tokens of one issuer. Verification runs directly on
``cryptography`` with keys prepared at build time (see :mod:`extauthz.authn.jwks`) rather than
through ``jwt.decode``: that keeps every check — and the clock — under our control, and keeps the
safety properties PyJWT has (and a few more), in this order::

    token  length <= 16 KiB; exactly three base64url segments (strict, canonical, no padding)
    header JSON object (no duplicate names, no NaN/Infinity); ``alg`` must be one of the
           issuer's pinned algorithms *before any key is touched* (so ``none`` and ``HS256``
           — the RSA-public-key-as-HMAC-secret confusion attack — never reach a key);
           ``typ`` absent (unless ``require_typ``) or one of ``typ`` (default ``JWT``,
           ``at+jwt``; case-insensitive, ``application/`` implied), else invalid_token;
           ``crit`` is refused (we implement no extensions), ``b64`` other than true refused,
           ``kid`` must be a string
    key    by (kid, alg) among keys whose type/curve matches the alg family (a kid the issuer
           published for several keys: each is tried, at most 4, see jwks.py); no kid: the one
           key usable for the alg, and a token without kid is refused (unknown_key) when the
           issuer has several candidates. Unknown -> one rate-limited, de-duplicated JWKS
           refetch, waited for at most ``refetch_wait_seconds`` (0.25 s), then unknown_key
           while the fetch finishes in the background
    sig    verified with the key's prepared verifier (RSA signatures must be exactly the modulus
           length, ECDSA R||S exactly twice the coordinate size)
    claims only now is the payload parsed: a JSON object; ``iss`` exact; ``aud`` string or
           array intersecting the configured audiences; ``exp`` (required unless
           ``require_exp: false``; always required with ``max_lifetime_seconds``), ``nbf``,
           ``iat`` as finite numbers, checked against ``ctx.clock`` with ``leeway_seconds``:

               expired          now >= exp + leeway
               not yet valid    now <  nbf - leeway
               issued in future now <  iat - leeway
               lifetime         exp - now > max_lifetime + leeway   (reason invalid_token)

           ``max_lifetime_seconds: 0`` (the default) sets no bound: a token whose ``exp`` is
           years away is accepted until then (only a revoked ``jti`` stops it). Set it to the
           longest lifetime your issuer grants to refuse such tokens.

Every failure raises :class:`~extauthz.errors.AuthenticationError` with a reason code and a short
public-safe description; the token itself never appears in an error, a log line or a metric.

Verified-token cache (:class:`~extauthz.authn.cache.CredentialCache`): a bounded LRU keyed by the
SHA-256 of the token (never the token). An entry holds the Identity *without claims*, the
:class:`~extauthz.authn.jwks.JwkKey` that verified it, the window ``[lo, hi)`` in which a fresh
verification would also pass (``hi = exp + leeway``), and only what the per-request checks read:
``jti`` (when a revocation list is configured) and ``cnf``. A hit needs: the JWKS not stale,
``lo <= now < hi``, and the key still in the current key set — a key removed at a refresh
invalidates exactly the tokens it signed. So a hit is a dict lookup, two comparisons and a set
membership test, and it never accepts a token the full path would refuse. Failures are not
cached. The request's Identity gets its claims from the request's own token — the one that was
verified, byte for byte — decoded only if something reads them
(:mod:`extauthz.authn.lazyclaims`): ~500 bytes per cached token instead of ~1 KiB
(docs/memory.md).

Claims to headers: a dotted path (``realm_access.roles``) — a top-level claim whose name contains
dots (``https://example.com/roles``) is matched first. Strings as is, numbers/booleans as JSON,
arrays joined with ``,``, objects as compact JSON; an absent/null claim or empty array gives no
header. A value with control characters is rendered as is: the pipeline denies the request
(``identity_not_representable``) rather than allow it without the header.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from extauthz.authn.base import Authenticator, BearerScopeChallenge, Challenge
from extauthz.authn.cache import CredentialCache, Shared, credential_key
from extauthz.authn.certbinding import CertBinding
from extauthz.authn.context import BuildContext
from extauthz.authn.jwks import (
    ALGORITHMS,
    JwkKey,
    JwksSource,
    KeySet,
    b64url_decode,
    jwks_source_from_spec,
)
from extauthz.authn.lazyclaims import LazyClaims
from extauthz.authn.sources import Source, SourceCredentials
from extauthz.clock import Clock
from extauthz.config.schema import JwtSpec
from extauthz.errors import AuthenticationError, Reason
from extauthz.metrics import Metrics
from extauthz.types import AuthMethod, Identity, RequestView

if TYPE_CHECKING:
    from extauthz.authn.shared_state import Revocations

log = logging.getLogger("extauthz.jwt")

#: longest token accepted (bounds the work an unauthenticated request can cause)
MAX_TOKEN_LENGTH = 16 * 1024

_TOKEN = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")

_DESCRIPTIONS: Mapping[Reason, str] = {
    Reason.MALFORMED_TOKEN: "malformed token",
    Reason.TOKEN_EXPIRED: "token expired",
    Reason.TOKEN_NOT_YET_VALID: "token not yet valid",
    Reason.TOKEN_ISSUED_IN_FUTURE: "token issued in the future",
    Reason.BAD_SIGNATURE: "signature verification failed",
    Reason.UNKNOWN_KEY: "unknown signing key",
    Reason.WRONG_AUDIENCE: "token audience not accepted",
    Reason.WRONG_ISSUER: "token issuer not accepted",
    Reason.DISALLOWED_ALGORITHM: "token algorithm not allowed",
    Reason.MISSING_CLAIM: "token lacks a required claim",
    Reason.INVALID_TOKEN: "invalid token",
    Reason.TOKEN_REVOKED: "token revoked",
}


class _DuplicateName(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateName("duplicate member name")
    return out


def _media_type(typ: str) -> str:
    """``typ`` as a full lowercase media type: ``at+JWT`` -> ``application/at+jwt``."""
    lowered = typ.strip().lower()
    return lowered if "/" in lowered else "application/" + lowered


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _json_segment(segment: str) -> Any:
    """Decode one base64url JSON segment strictly; ``ValueError`` on any problem."""
    raw = b64url_decode(segment)
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("too deeply nested") from None


#: an _Entry's ``cnf`` when the token has no cnf claim (a cnf of JSON null is not "absent")
_ABSENT: Any = object()
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _Entry:
    """A verified token: valid while ``lo <= now < hi`` and ``key`` is in the current key set.

    No claims (each request reads them from its own token, :mod:`extauthz.authn.lazyclaims`):
    only what the per-request checks need — ``jti`` when a revocation list is configured, the
    ``cnf`` claim for certificate binding."""

    identity: Identity
    key: JwkKey
    lo: float
    jti: str | None
    cnf: Any


def _claims_of(segment: str) -> dict[str, Any]:
    """The claims of a payload segment that has already been verified (a cache hit)."""
    claims: dict[str, Any] = _json_segment(segment)
    return claims


#: Identity's fields but ``claims``, for :func:`_with_claims`
_IDENTITY_FIELDS = tuple(f.name for f in dataclasses.fields(Identity) if f.name != "claims")
_set = object.__setattr__


def _with_claims(identity: Identity, claims: Mapping[str, Any]) -> Identity:
    """A copy of ``identity`` with ``claims`` (what ``dataclasses.replace`` does, at a third of
    its cost: it runs on every cache hit)."""
    copy = object.__new__(Identity)
    for name in _IDENTITY_FIELDS:
        _set(copy, name, getattr(identity, name))
    _set(copy, "claims", claims)
    return copy


def _payload_segment(token: str) -> str:
    start = token.index(".") + 1
    return token[start:token.index(".", start)]


# ------------------------------------------------------------------------------------ claim paths


def _claim_path(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """A getter for a (possibly dotted) claim; a literal top-level name wins over the path."""
    parts = tuple(name.split("."))

    def get(claims: Mapping[str, Any]) -> Any:
        if name in claims:
            return claims[name]
        if len(parts) == 1:
            return None
        node: Any = claims
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    return get


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def render_claim(value: Any) -> str | None:
    """A claim as a header value (``None``: no header). See the module docstring."""
    if value is None:
        return None
    if isinstance(value, list):
        if not value:
            return None
        rendered = ",".join(_scalar(v) for v in value)
    else:
        rendered = _scalar(value)
    # control characters are not filtered here: dropping the header would allow the request
    # without it; the pipeline denies unrepresentable identity values instead
    return rendered


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a finite float; ``None`` if absent; ``ValueError`` if malformed."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"claim {name} is not a number")
    number = float(value)  # OverflowError for absurd integers: caught by the caller
    if not math.isfinite(number):
        raise ValueError(f"claim {name} is not finite")
    return number


# ----------------------------------------------------------------------------------- authenticator


class JwtAuthenticator(BearerScopeChallenge, SourceCredentials):
    """Verifies bearer JWTs of one issuer; see the module docstring for the exact rules.

    Build with :meth:`from_spec` (or directly, with a :class:`~extauthz.authn.jwks.JwksSource`,
    e.g. in tests). ``start()`` begins JWKS refreshing for remote key sets; ``close()`` stops it.
    """

    kind: AuthMethod = AuthMethod.JWT

    def __init__(
        self,
        name: str,
        spec: JwtSpec,
        jwks: JwksSource,
        *,
        realm: str,
        metrics: Metrics,
        clock: Clock,
        revocations: Revocations | None = None,
    ) -> None:
        bad = [a for a in spec.algorithms if a not in ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported algorithms {bad}")
        self.name = name
        self.issuer = spec.issuer
        self.jwks = jwks
        self._clock = clock
        self._algorithms = frozenset(spec.algorithms)
        self._audiences = frozenset(spec.audiences)
        self._leeway = float(spec.leeway_seconds)
        self._max_lifetime = float(spec.max_lifetime_seconds)
        self._require_exp = spec.require_exp or self._max_lifetime > 0
        self._typs = frozenset(_media_type(t) for t in spec.typ)
        self._require_typ = spec.require_typ
        self._subject = _claim_path(spec.subject_claim)
        self._subject_name = spec.subject_claim
        self._scope_claims = tuple(spec.scope_claims)
        #: one object per distinct scope set and per distinct time among the cached tokens
        self._shared_scopes: Shared[frozenset[str]] = Shared(1024)
        self._shared_time: Shared[float] = Shared()
        self._claim_headers = tuple(
            (_claim_path(claim), header) for claim, header in spec.claims_to_headers.items()
        )
        self._source = Source.from_spec(spec.source)
        #: verified tokens by SHA-256 (module docstring); hit/miss in cache_requests{cache="jwt"}
        self._cache: CredentialCache[_Entry] = CredentialCache(
            spec.cache_size, clock=clock, metrics=metrics, label="jwt")
        #: revoked ``jti`` values, checked after verification and on every cache hit
        self._revocations = revocations
        #: RFC 8705: a token with cnf x5t#S256 must come with that client certificate
        self._binding = CertBinding(
            spec.certificate_binding,
            lambda reason, description, detail: self._fail(reason, detail, description),
        )

        self._init_credentials(
            Challenge(spec.source.authorization or "Bearer", (("realm", realm),)), (self._source,),
            # the pipeline removes client-sent values of the claim headers even when a token
            # lacks the claim (else a client could spoof them)
            injected_headers=tuple(spec.claims_to_headers.values()),
            issuer=spec.issuer,
        )
        self._init_bearer_scope(realm)

    @classmethod
    def from_spec(cls, name: str, spec: JwtSpec, ctx: BuildContext) -> JwtAuthenticator:
        """Build from configuration; ``ValueError`` (with a message) for bad input, e.g. an
        unreadable JWKS file or a JWKS without a usable key."""
        jwks = jwks_source_from_spec(
            spec, base_dir=ctx.base_dir, clock=ctx.clock, metrics=ctx.metrics,
            policy=ctx.outbound, reload_state=ctx.reload_state,
        )
        revocations = ctx.state.revocations if ctx.state is not None else None
        return cls(name, spec, jwks, realm=ctx.settings.realm, metrics=ctx.metrics, clock=ctx.clock,
                   revocations=revocations)

    # -- Authenticator protocol ------------------------------------------------------------------

    async def authenticate(self, view: RequestView) -> Identity | None:
        raw = self._source.read(view)
        if raw is None:
            return None
        token = raw.strip()
        if not token:
            raise self._malformed("empty credential")
        now = self._clock()
        keyset = self.jwks.keys_at(now)  # DependencyUnavailable when none or stale

        def fresh(entry: _Entry) -> bool:
            # a key removed at a refresh invalidates exactly the tokens it signed
            return entry.lo <= now and entry.key in keyset.live

        entry = await self._cache.through(
            credential_key(token), now, lambda: self._verify(token, now, keyset), fresh)
        return self._accepted(entry, token, view)

    def _accepted(self, entry: _Entry, token: str, view: RequestView) -> Identity:
        """Per-request checks of a verified (or cached) token — certificate binding, then
        revocation — and this request's Identity: the entry's, with the claims of its token."""
        cnf = entry.cnf
        self._binding.check(_NO_CLAIMS if cnf is _ABSENT else {"cnf": cnf}, view)
        self._not_revoked(entry.jti)
        return _with_claims(entry.identity, LazyClaims(_payload_segment(token), _claims_of))

    def _not_revoked(self, jti: str | None) -> None:
        """Refuse a verified (or cached) token whose ``jti`` is revoked: a dict lookup, and a 503
        instead when the shared revocation list is too stale to trust."""
        revocations = self._revocations
        if revocations is not None and jti is not None and revocations.jti_revoked(jti):
            raise self._fail(Reason.TOKEN_REVOKED)

    def ready(self) -> bool:
        """Not before the key set was loaded once (a remote JWKS fetches in ``start``)."""
        return self.jwks.keyset is not None

    async def start(self) -> None:
        await self.jwks.start()

    async def close(self) -> None:
        await self.jwks.close()
        self._cache.clear()

    # -- verification ----------------------------------------------------------------------------

    def _fail(self, reason: Reason, detail: str = "", description: str = "") -> AuthenticationError:
        return AuthenticationError(
            reason,
            description or _DESCRIPTIONS[reason],
            detail,
            authenticator=self.name,
        )

    def _malformed(self, detail: str) -> AuthenticationError:
        return self._fail(Reason.MALFORMED_TOKEN, detail)

    async def _verify(self, token: str, now: float, keyset: KeySet) -> tuple[_Entry, float]:
        """Fully verify ``token`` (module docstring, in that order); returns its cache entry and
        the end of the window in which a fresh verification would also pass."""
        header_seg, payload_seg, signature_seg = self._segments(token)
        header = self._json_object(header_seg, "header")
        # The algorithm is pinned before anything else touches a key.
        alg = self._validate_alg(header.get("alg"))
        self._validate_typ(header.get("typ"))
        self._validate_extensions(header)
        kid = self._validate_kid(header.get("kid"))
        try:
            signature = b64url_decode(signature_seg)
        except ValueError:
            raise self._malformed("signature is not base64url") from None
        keys = await self._candidates(kid, alg, keyset)
        signing_input = token[: len(header_seg) + 1 + len(payload_seg)].encode("ascii")
        # Several keys only for a kid the issuer published more than once (jwks.py).
        key = next((k for k in keys if signature and k.verify(alg, signing_input, signature)),
                   None)
        if key is None:
            raise self._fail(Reason.BAD_SIGNATURE, f"kid {keys[0].kid!r} {alg}")
        # Only signed content from here on.
        claims = self._json_object(payload_seg, "payload")
        lo, hi = self._check_claims(claims, now)
        lo, hi = self._shared_time(lo), self._shared_time(hi)
        jti = claims.get("jti") if self._revocations is not None else None
        return _Entry(self._identity(claims, key), key, lo,
                      jti if isinstance(jti, str) else None, claims.get("cnf", _ABSENT)), hi

    def _segments(self, token: str) -> tuple[str, str, str]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise self._malformed("token too long")
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise self._malformed("not a compact JWS")
        header_seg, payload_seg, signature_seg = match.groups()
        return header_seg, payload_seg, signature_seg

    def _json_object(self, segment: str, what: str) -> dict[str, Any]:
        try:
            value = _json_segment(segment)
        except ValueError as err:
            raise self._malformed(f"{what}: {err}") from None
        if not isinstance(value, dict):
            raise self._malformed(f"{what} is not a JSON object")
        return value

    def _validate_alg(self, alg: object) -> str:
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise self._fail(
                Reason.DISALLOWED_ALGORITHM,
                f"alg {str(alg)[:32]!r} not in {sorted(self._algorithms)}",
            )
        return alg

    def _validate_typ(self, typ: object) -> None:
        """RFC 8725 §3.11: a token of another type (``JWE``, ``secevent+jwt``, an ID token
        typed ``id+jwt``...) must not pass as an access token. RFC 7515 §4.1.9: compared
        case-insensitively, ``application/`` implied when there is no ``/``."""
        if typ is None:
            if self._require_typ:
                raise self._fail(Reason.INVALID_TOKEN, "typ absent", "token type not accepted")
            return
        if not isinstance(typ, str) or _media_type(typ) not in self._typs:
            raise self._fail(Reason.INVALID_TOKEN, f"typ {str(typ)[:32]!r} not accepted",
                             "token type not accepted")

    def _validate_extensions(self, header: dict[str, Any]) -> None:
        """We implement no JWS extension: ``crit`` is refused, and so is an unencoded payload."""
        if "crit" in header:
            raise self._malformed("unsupported critical header parameters")
        if header.get("b64", True) is not True:
            raise self._malformed("unencoded payload (b64) not supported")

    def _validate_kid(self, kid: object) -> str | None:
        if kid is not None and not isinstance(kid, str):
            raise self._malformed("kid is not a string")
        return kid

    async def _candidates(self, kid: str | None, alg: str, keyset: KeySet) -> list[JwkKey]:
        """The keys that may have signed the token; one bounded refetch when none is known."""
        keys = keyset.candidates(kid, alg)
        if keys:
            return list(keys)
        if kid is None and keyset.count(alg) > 1:
            raise self._fail(
                Reason.UNKNOWN_KEY,
                f"token has no kid and {keyset.count(alg)} keys can verify {alg}",
                "token has no key id",
            )
        # Bounded wait (refetch_wait_seconds): answer from the keys we have rather than
        # let Envoy's ext_authz timeout answer for us; the fetch goes on in the background.
        await self.jwks.refetch()
        keys = self.jwks.keys_at(self._clock()).candidates(kid, alg)
        if not keys:
            raise self._fail(Reason.UNKNOWN_KEY, f"no key for kid {str(kid)[:64]!r} {alg}")
        return list(keys)

    def _check_claims(self, claims: dict[str, Any], now: float) -> tuple[float, float]:
        """Registered claims; returns the window ``[lo, hi)`` in which they hold."""
        self._validate_iss(claims.get("iss"))
        self._validate_aud(claims.get("aud"))
        try:
            exp = _number(claims, "exp")
            nbf = _number(claims, "nbf")
            iat = _number(claims, "iat")
        except (ValueError, OverflowError) as err:
            raise self._malformed(str(err)) from None
        hi = self._validate_exp(exp, now)
        lo = max(self._validate_nbf(nbf, now), self._validate_iat(iat, now),
                 self._validate_lifetime(exp, now))
        return lo, hi

    def _validate_iss(self, iss: object) -> None:
        if iss is None:
            raise self._missing("iss")
        if iss != self.issuer:
            raise self._fail(Reason.WRONG_ISSUER, "iss does not match")

    def _validate_aud(self, aud: object) -> None:
        if aud is None:
            raise self._missing("aud")
        if isinstance(aud, str):
            audience_ok = aud in self._audiences
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            audience_ok = not self._audiences.isdisjoint(aud)
        else:
            raise self._malformed("aud is neither a string nor an array of strings")
        if not audience_ok:
            raise self._fail(Reason.WRONG_AUDIENCE, "no accepted audience")

    def _validate_exp(self, exp: float | None, now: float) -> float:
        """The end of the window (exp + leeway; infinite without exp)."""
        if exp is None:
            if self._require_exp:
                raise self._missing("exp")
            return math.inf
        hi = exp + self._leeway
        if now >= hi:
            raise self._fail(Reason.TOKEN_EXPIRED, f"expired {now - exp:.0f}s ago")
        return hi

    def _validate_nbf(self, nbf: float | None, now: float) -> float:
        """The start of the window nbf sets (nbf - leeway)."""
        if nbf is None:
            return -math.inf
        lo = nbf - self._leeway
        if now < lo:
            raise self._fail(Reason.TOKEN_NOT_YET_VALID, f"valid in {nbf - now:.0f}s")
        return lo

    def _validate_iat(self, iat: float | None, now: float) -> float:
        """The start of the window iat sets (iat - leeway)."""
        if iat is None:
            return -math.inf
        start = iat - self._leeway
        if now < start:
            raise self._fail(
                Reason.TOKEN_ISSUED_IN_FUTURE, f"issued {iat - now:.0f}s in the future"
            )
        return start

    def _validate_lifetime(self, exp: float | None, now: float) -> float:
        """The start of the window ``max_lifetime_seconds`` sets (exp - max lifetime - leeway)."""
        if self._max_lifetime <= 0 or exp is None:
            return -math.inf
        start = exp - self._max_lifetime - self._leeway
        if now < start:
            raise self._fail(
                Reason.INVALID_TOKEN,
                f"expires in {exp - now:.0f}s, over max lifetime {self._max_lifetime:.0f}s",
                "token lifetime exceeds the allowed maximum",
            )
        return start

    def _missing(self, claim: str) -> AuthenticationError:
        return self._fail(Reason.MISSING_CLAIM, claim, f"token lacks the {claim} claim")

    def _identity(self, claims: dict[str, Any], key: JwkKey) -> Identity:
        subject = self._subject(claims)
        if subject is None or subject == "":
            raise self._missing(self._subject_name)
        if not isinstance(subject, str):
            raise self._malformed(f"{self._subject_name} is not a string")
        scopes: set[str] = set()
        for name in self._scope_claims:
            value = claims.get(name)
            if isinstance(value, str):
                scopes.update(value.split())
            elif isinstance(value, list):
                scopes.update(v for v in value if isinstance(v, str) and v)
        headers: list[tuple[str, str]] = []
        for get, header in self._claim_headers:
            rendered = render_claim(get(claims))
            if rendered is not None:
                headers.append((header, rendered))
        exp = claims.get("exp")
        return Identity(
            method=AuthMethod.JWT,
            subject=subject,
            authenticator=self.name,
            scopes=self._shared_scopes(frozenset(scopes)),
            claims=_NO_CLAIMS,  # shared; each request gets its own (_accepted)
            expires_at=self._shared_time(float(exp)) if exp is not None else None,
            headers=tuple(headers),
            key_id=key.kid,
        )


_: type[Authenticator] = JwtAuthenticator  # static conformance check (mypy)
