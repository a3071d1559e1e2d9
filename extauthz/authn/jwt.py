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

Verified-token cache: a bounded LRU keyed by the SHA-256 of the token (32 bytes instead of the
~700-byte token: the key is most of an entry's size). An entry holds the Identity, the
:class:`~extauthz.authn.jwks.JwkKey` that verified it and the window ``[lo, hi)`` in which a fresh
verification would also pass (``hi = exp + leeway``). A hit needs: the JWKS not stale, ``lo <= now
< hi``, and the key still in the current key set — a key removed at a refresh invalidates exactly
the tokens it signed. So a hit is a dict lookup, two comparisons and a set membership test, and it
never accepts a token the full path would refuse. Failures are not cached.

Claims to headers: a dotted path (``realm_access.roles``) — a top-level claim whose name contains
dots (``https://example.com/roles``) is matched first. Strings as is, numbers/booleans as JSON,
arrays joined with ``,``, objects as compact JSON; an absent/null claim or empty array gives no
header. A value with control characters is rendered as is: the pipeline denies the request
(``identity_not_representable``) rather than allow it without the header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from extauthz.authn.base import Challenge
from extauthz.authn.certbinding import CertBinding
from extauthz.authn.jwks import (
    ALGORITHMS,
    JwkKey,
    JwksSource,
    KeySet,
    RemoteJwks,
    b64url_decode,
    jwks_source_from_spec,
)
from extauthz.authn.lru import TtlLru
from extauthz.authn.registry import BuildContext
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


#: string values up to this length are interned: ``iss``, ``aud``, ``scope``, roles... repeat in
#: every token of an issuer, and a verified token's claims live in the cache until it expires
_INTERN_MAX = 64


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Interning makes 100 000 cached tokens share one copy of each member name and of each
    # repeated short value instead of holding their own (docs/performance.md: cached_tokens).
    intern = sys.intern
    out = {intern(k): intern(v) if type(v) is str and len(v) <= _INTERN_MAX else v
           for k, v in pairs}
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


@dataclass(frozen=True, slots=True)
class _Entry:
    """A verified token: valid while ``lo <= now < hi`` and ``key`` is in the current key set."""

    identity: Identity
    key: JwkKey
    lo: float


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


class JwtAuthenticator(SourceCredentials):
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
        self._scope_sets: dict[frozenset[str], frozenset[str]] = {}
        self._claim_headers = tuple(
            (_claim_path(claim), header) for claim, header in spec.claims_to_headers.items()
        )
        #: headers this authenticator may inject; the pipeline removes client-sent values of
        #: them even when a token lacks the claim (else a client could spoof them)
        self.injected_headers: tuple[str, ...] = tuple(spec.claims_to_headers.values())
        self._source = Source.from_spec(spec.source)
        self._cache: TtlLru[bytes, _Entry] | None = (
            TtlLru(spec.cache_size) if spec.cache_size > 0 else None
        )
        #: revoked ``jti`` values, checked after verification and on every cache hit
        self._revocations = revocations
        #: RFC 8705: a token with cnf x5t#S256 must come with that client certificate
        self._binding = CertBinding(
            spec.certificate_binding,
            lambda reason, description, detail: self._fail(reason, detail, description),
        )
        self._hit = metrics.cache_requests.labels(cache="jwt", result="hit")
        self._miss = metrics.cache_requests.labels(cache="jwt", result="miss")

        self._init_credentials(
            Challenge(spec.source.authorization or "Bearer", (("realm", realm),)), (self._source,)
        )

    @classmethod
    def from_spec(cls, name: str, spec: JwtSpec, ctx: BuildContext) -> JwtAuthenticator:
        """Build from configuration; ``ValueError`` (with a message) for bad input, e.g. an
        unreadable JWKS file or a JWKS without a usable key."""
        jwks = jwks_source_from_spec(
            spec, base_dir=ctx.base_dir, clock=ctx.clock, metrics=ctx.metrics,
            policy=ctx.outbound,
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
        cache = self._cache
        if cache is None:
            return self._accepted((await self._verify(token, now, keyset))[0], view)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = cache.get(digest, now)
        if entry is not None:
            if entry.lo <= now and entry.key in keyset.live:
                self._hit.inc()
                return self._accepted(entry.identity, view)
            cache.discard(digest)
        self._miss.inc()
        identity, entry, hi = await self._verify(token, now, keyset)
        cache.put(digest, entry, hi)
        return self._accepted(identity, view)

    def _accepted(self, identity: Identity, view: RequestView) -> Identity:
        """Per-request checks of a verified (or cached) token: revocation, certificate binding."""
        self._binding.check(identity.claims, view)
        return self._not_revoked(identity)

    def _not_revoked(self, identity: Identity) -> Identity:
        """Refuse a verified (or cached) token whose ``jti`` is revoked: a dict lookup, and a 503
        instead when the shared revocation list is too stale to trust."""
        revocations = self._revocations
        if revocations is not None:
            jti = identity.claims.get("jti")
            if isinstance(jti, str) and revocations.jti_revoked(jti):
                raise self._fail(Reason.TOKEN_REVOKED)
        return identity

    def adopt_outbound_state(self, candidates: Iterable[object]) -> None:
        """On a reload: take over the last good keys of a previous authenticator that fetched
        from the same place (issuer, URL or discovery, algorithms), whatever its name."""
        jwks = self.jwks
        if not isinstance(jwks, RemoteJwks):
            return
        for old in candidates:
            if (isinstance(old, JwtAuthenticator) and isinstance(old.jwks, RemoteJwks)
                    and jwks.adopt(old.jwks)):
                return

    async def start(self) -> None:
        await self.jwks.start()

    async def close(self) -> None:
        await self.jwks.close()
        if self._cache is not None:
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

    async def _verify(
        self, token: str, now: float, keyset: KeySet
    ) -> tuple[Identity, _Entry, float]:
        """Fully verify ``token``; returns the identity, its cache entry and the entry's end."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise self._malformed("token too long")
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise self._malformed("not a compact JWS")
        header_seg, payload_seg, signature_seg = match.groups()
        try:
            header = _json_segment(header_seg)
        except ValueError as err:
            raise self._malformed(f"header: {err}") from None
        if not isinstance(header, dict):
            raise self._malformed("header is not a JSON object")

        # The algorithm is pinned before anything else touches a key.
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise self._fail(
                Reason.DISALLOWED_ALGORITHM,
                f"alg {str(alg)[:32]!r} not in {sorted(self._algorithms)}",
            )
        self._check_typ(header.get("typ"))
        if "crit" in header:
            raise self._malformed("unsupported critical header parameters")
        if header.get("b64", True) is not True:
            raise self._malformed("unencoded payload (b64) not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._malformed("kid is not a string")
        try:
            signature = b64url_decode(signature_seg)
        except ValueError:
            raise self._malformed("signature is not base64url") from None

        keys = keyset.candidates(kid, alg)
        if not keys:
            if kid is None and keyset.count(alg) > 1:
                raise self._fail(
                    Reason.UNKNOWN_KEY,
                    f"token has no kid and {keyset.count(alg)} keys can verify {alg}",
                    "token has no key id",
                )
            # Bounded wait (refetch_wait_seconds): answer from the keys we have rather than
            # let Envoy's ext_authz timeout answer for us; the fetch goes on in the background.
            await self.jwks.refetch()
            keyset = self.jwks.keys_at(self._clock())
            keys = keyset.candidates(kid, alg)
            if not keys:
                raise self._fail(Reason.UNKNOWN_KEY, f"no key for kid {str(kid)[:64]!r} {alg}")

        signing_input = token[: len(header_seg) + 1 + len(payload_seg)].encode("ascii")
        # Several keys only for a kid the issuer published more than once (jwks.py).
        key = next((k for k in keys if signature and k.verify(alg, signing_input, signature)),
                   None)
        if key is None:
            raise self._fail(Reason.BAD_SIGNATURE, f"kid {keys[0].kid!r} {alg}")

        # Only signed content from here on.
        try:
            claims = _json_segment(payload_seg)
        except ValueError as err:
            raise self._malformed(f"payload: {err}") from None
        if not isinstance(claims, dict):
            raise self._malformed("payload is not a JSON object")
        lo, hi = self._check_claims(claims, now)
        identity = self._identity(claims, key)
        return identity, _Entry(identity, key, lo), hi

    def _check_typ(self, typ: object) -> None:
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

    def _check_claims(self, claims: dict[str, Any], now: float) -> tuple[float, float]:
        """Registered claims; returns the window ``[lo, hi)`` in which they hold."""
        iss = claims.get("iss")
        if iss is None:
            raise self._missing("iss")
        if iss != self.issuer:
            raise self._fail(Reason.WRONG_ISSUER, "iss does not match")
        aud = claims.get("aud")
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

        try:
            exp = _number(claims, "exp")
            nbf = _number(claims, "nbf")
            iat = _number(claims, "iat")
        except (ValueError, OverflowError) as err:
            raise self._malformed(str(err)) from None
        leeway = self._leeway
        lo = -math.inf
        hi = math.inf
        if exp is None:
            if self._require_exp:
                raise self._missing("exp")
        else:
            hi = exp + leeway
            if now >= hi:
                raise self._fail(Reason.TOKEN_EXPIRED, f"expired {now - exp:.0f}s ago")
        if nbf is not None:
            lo = nbf - leeway
            if now < lo:
                raise self._fail(Reason.TOKEN_NOT_YET_VALID, f"valid in {nbf - now:.0f}s")
        if iat is not None:
            start = iat - leeway
            if now < start:
                raise self._fail(
                    Reason.TOKEN_ISSUED_IN_FUTURE, f"issued {iat - now:.0f}s in the future"
                )
            lo = max(lo, start)
        if self._max_lifetime > 0 and exp is not None:
            start = exp - self._max_lifetime - leeway
            if now < start:
                raise self._fail(
                    Reason.INVALID_TOKEN,
                    f"expires in {exp - now:.0f}s, over max lifetime {self._max_lifetime:.0f}s",
                    "token lifetime exceeds the allowed maximum",
                )
            lo = max(lo, start)
        return lo, hi

    def _missing(self, claim: str) -> AuthenticationError:
        return self._fail(Reason.MISSING_CLAIM, claim, f"token lacks the {claim} claim")

    def _shared_scopes(self, scopes: frozenset[str]) -> frozenset[str]:
        """One shared frozenset per distinct scope set (a handful per issuer in practice; the
        table stops growing at 1024 sets, after which sets are simply not shared)."""
        shared = self._scope_sets.get(scopes)
        if shared is not None:
            return shared
        if len(self._scope_sets) < 1024:
            self._scope_sets[scopes] = scopes
        return scopes

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
            claims=MappingProxyType(claims),
            expires_at=float(exp) if exp is not None else None,
            headers=tuple(headers),
            key_id=key.kid,
        )
