"""What both signature protocols check the same way: keys, coverage, time, body, nonce.

One :class:`Checks` per authenticator, built from its spec; the protocol modules
(:mod:`.rfc9421`, :mod:`.cavage`) parse their own headers and call these in their order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from extauthz.authn.context import BuildContext
from extauthz.authn.digest import (
    BodyNotForwarded,
    BodyTruncated,
    DigestError,
    complete_body,
    verify_content_digest,
    verify_legacy_digest,
)
from extauthz.authn.hmac_sig.components import field
from extauthz.authn.nonces import (
    NonceStore,
    NonceStoreFull,
    NonceStoreUnavailable,
    NonceTooOld,
    NonceUse,
    key_scope,
)
from extauthz.authn.secrets import load_secret
from extauthz.clock import Clock
from extauthz.config.schema import HmacSpec
from extauthz.errors import AuthenticationError, DependencyUnavailable, Reason
from extauthz.types import AuthMethod, Identity, RequestView

log = logging.getLogger("extauthz.hmac")

ALGORITHM = "hmac-sha256"
#: signature headers longer than this are refused before parsing
MAX_HEADER_LENGTH = 8192
MAX_COMPONENTS = 64
MAX_NONCE_LENGTH = 256

#: covered fields that vouch for the body: each is verified against it (both profiles), so no
#: signature can bind a digest that nobody checked
BODY_DIGESTS = ("content-digest", "repr-digest", "digest")

_DESCRIPTIONS: Mapping[Reason, str] = {
    Reason.MALFORMED_SIGNATURE: "malformed signature",
    Reason.MISSING_COMPONENT: "signature does not cover a required component",
    Reason.SIGNATURE_EXPIRED: "signature expired",
    Reason.SIGNATURE_NOT_YET_VALID: "signature created in the future",
    Reason.REPLAYED: "signature nonce already used",
    Reason.DIGEST_MISMATCH: "content digest mismatch",
    Reason.BODY_TRUNCATED: "body truncated",
    Reason.BODY_NOT_FORWARDED: "request body not forwarded",
    Reason.BAD_SIGNATURE: "signature verification failed",
    Reason.UNKNOWN_KEY: "unknown signing key",
    Reason.DISALLOWED_ALGORITHM: "signature algorithm not allowed",
}


@dataclass(frozen=True, slots=True)
class HmacKey:
    """A verified, loaded key."""

    id: str
    secret: bytes
    consumer: str | None = None
    scopes: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never print the secret
        return f"HmacKey(id={self.id!r}, consumer={self.consumer!r})"


def load_keys(spec: HmacSpec, ctx: BuildContext) -> dict[str, HmacKey]:
    """Read every secret of ``spec`` now (``ValueError`` names the key)."""
    keys: dict[str, HmacKey] = {}
    for i, entry in enumerate(spec.keys):
        try:
            secret = load_secret(
                file=entry.secret_file,
                env=entry.secret_env,
                encoding=entry.secret_encoding,
                base_dir=ctx.base_dir,
            )
        except ValueError as exc:
            raise ValueError(f"keys[{i}] ({entry.id}): {exc}") from None
        if len(secret) < spec.min_secret_bytes:
            raise ValueError(
                f"keys[{i}] ({entry.id}): secret is {len(secret)} bytes, "
                f"shorter than min_secret_bytes ({spec.min_secret_bytes})"
            )
        keys[entry.id] = HmacKey(
            id=entry.id, secret=secret, consumer=entry.consumer, scopes=frozenset(entry.scopes),
        )
    return keys


def missing(required: Sequence[str], covered: set[str],
            implied: Mapping[str, frozenset[str]]) -> list[str]:
    """The required components ``covered`` lacks; ``implied``: required component -> covered
    components that satisfy it besides itself (each protocol has its table)."""
    return [name for name in required
            if name not in covered and not covered & implied.get(name, frozenset())]


@dataclass(frozen=True, slots=True)
class Window:
    created: int | None
    expires: int | None
    #: end of the acceptance window: the nonce must be remembered until then
    ends_at: float


class Checks:
    """The shared checks of one authenticator (module docstring)."""

    def __init__(
        self,
        name: str,
        spec: HmacSpec,
        keys: Mapping[str, HmacKey],
        *,
        clock: Clock,
        nonces: NonceStore,
        key_header: str,
    ) -> None:
        self.name = name
        self.spec = spec
        self.keys = keys
        self._clock = clock
        self._nonces = nonces
        # Nonces are kept per signing key (id + secret fingerprint), not per authenticator name.
        self._scopes = {kid: key_scope(kid, key.secret) for kid, key in keys.items()}
        self._share = spec.nonce_cache_per_key or max(1, spec.nonce_cache_size // len(keys))
        self._skew = float(spec.max_skew_seconds)
        self._max_age = float(spec.max_age_seconds)
        self._digest_algs = tuple(spec.digest_algorithms)
        required = list(spec.required_components)
        if spec.require_digest and "content-digest" not in required:
            required.append("content-digest")
        #: the components every signature must cover (require_digest adds content-digest)
        self.required = tuple(required)
        self._key_header = key_header

    def fail(self, reason: Reason, description: str = "", detail: str = "") -> AuthenticationError:
        """The 401 of this authenticator (a public-safe description by reason)."""
        return AuthenticationError(
            reason, description or _DESCRIPTIONS.get(reason, ""), detail, authenticator=self.name
        )

    def check_time(self, created: int | None, expires: int | None) -> Window:
        """The acceptance window of a signature's (signed) times; 401 when outside it."""
        now = self._clock()
        skew = self._skew
        if created is None and expires is None:
            raise self.fail(Reason.MALFORMED_SIGNATURE, "signature needs created or expires")
        if created is not None and expires is not None and expires < created:
            raise self.fail(Reason.MALFORMED_SIGNATURE, "signature expires before it is created")
        ends: list[float] = []
        if created is not None:
            if created > now + skew:
                raise self.fail(Reason.SIGNATURE_NOT_YET_VALID)
            ends.append(created + self._max_age + skew)
        if expires is not None:
            ends.append(expires + skew)
            if created is None and expires - now > self._max_age + skew:
                # Without created, a far expires would make an unbounded replay window.
                raise self.fail(Reason.MALFORMED_SIGNATURE, "signature lifetime too long")
        ends_at = min(ends)
        if now > ends_at:
            raise self.fail(Reason.SIGNATURE_EXPIRED)
        return Window(created, expires, ends_at)

    def check_body(self, view: RequestView, header: str) -> None:
        """A covered digest ``header`` must match the whole body extauthz received."""
        value = field(view.headers, header)
        if value is None:
            raise self.fail(Reason.MISSING_COMPONENT, f"covered header {header} is absent")
        # Only a body extauthz provably received whole can satisfy a digest (digest.py says
        # what Envoy sends); "no body forwarded" is never read as "empty body".
        try:
            body = complete_body(view.headers, view.body)
        except BodyTruncated as exc:
            raise self.fail(Reason.BODY_TRUNCATED, str(exc)) from None
        except BodyNotForwarded as exc:
            raise self.fail(
                Reason.BODY_NOT_FORWARDED, str(exc),
                "a signature covers a body digest but Envoy forwarded no body "
                "(with_request_body off or disabled on this route?)",
            ) from None
        if header == "repr-digest":
            # RFC 9530: the digest of the representation, i.e. of the body before any
            # content-coding. Without one it is the body itself; with one it cannot be checked
            # here, and an unchecked covered digest would vouch for any body.
            coding = (view.headers.value("content-encoding") or "identity").strip().lower()
            if coding != "identity":
                raise self.fail(Reason.DIGEST_MISMATCH,
                                "repr-digest of an encoded body cannot be verified")
        try:
            if header == "digest":
                verify_legacy_digest(value, body, self._digest_algs)
            else:
                verify_content_digest(value, body, self._digest_algs)
        except DigestError as exc:
            raise self.fail(Reason.DIGEST_MISMATCH, str(exc)) from None

    def check_bodies(self, view: RequestView, covered: set[str]) -> None:
        """Every covered body digest (even one covered member binds the body)."""
        for header in BODY_DIGESTS:
            if header in covered:
                self.check_body(view, header)

    async def remember_nonce(self, key: HmacKey, nonce: str, window: Window) -> None:
        """Record ``nonce`` for ``key`` until the window ends; 401 ``replayed`` if seen."""
        try:
            fresh = await self._nonces.remember(NonceUse(
                scope=self._scopes[key.id], nonce=nonce, created=window.created,
                expires=window.expires, max_age=self._max_age, skew=self._skew,
                share=self._share,
            ))
        except NonceTooOld as exc:
            raise self.fail(Reason.SIGNATURE_EXPIRED, detail=str(exc)) from None
        except NonceStoreFull as exc:
            log.warning("authenticator %s: nonce store refused: %s", self.name, exc)
            raise DependencyUnavailable(
                Reason.DEPENDENCY_UNAVAILABLE, "replay protection unavailable"
            ) from None
        except NonceStoreUnavailable:
            # A shared store (Redis) cannot answer: fail closed (logged by the store's client).
            raise DependencyUnavailable(
                Reason.SHARED_STATE_UNAVAILABLE, "replay protection unavailable"
            ) from None
        if not fresh:
            raise self.fail(Reason.REPLAYED)

    def identity(self, key: HmacKey, claims: dict[str, Any], expires: int | None) -> Identity:
        """The identity of a verified signature by ``key``."""
        return Identity(
            method=AuthMethod.HMAC,
            subject=key.consumer or key.id,
            authenticator=self.name,
            consumer=key.consumer,
            scopes=key.scopes,
            claims=MappingProxyType(claims),
            expires_at=float(expires) if expires is not None else None,
            headers=((self._key_header, key.id),),
            key_id=key.id,
        )
