"""JSON Web Key Sets: parsing keys with care, and keeping an issuer's keys fresh.

Parsing (:func:`parse_jwks`) turns a JWK Set into immutable :class:`JwkKey` objects, each bound at
parse time to the algorithms it may verify and to one prepared verifier per algorithm. A key is
*skipped* (and the reason recorded, never its material) when it is malformed, is not a signing key
(``use`` other than ``sig``, ``key_ops`` without ``verify``), has an unknown or symmetric ``kty``,
declares an ``alg`` that conflicts with its type, carries private key material (a leaked private
key must never be trusted), is an RSA key under 2048 bits, repeats a ``kid`` already seen for the
same algorithms, or is usable with none of the issuer's pinned algorithms. Good keys next to
skipped ones keep working.

Algorithm families are fixed (RFC 7518 §3, RFC 8037)::

    RS256/384/512, PS256/384/512  kty RSA (>= 2048 bits)
    ES256 / ES384 / ES512         kty EC, crv P-256 / P-384 / P-521 respectively
    EdDSA                         kty OKP, crv Ed25519 or Ed448

so an RSA key never verifies an ES256 token and an EC key on P-384 never verifies ES256. ``none``
and HMAC do not exist here at all.

Sources (:class:`JwksSource`):

* :class:`StaticJwks` — ``file`` / ``inline``; loaded at build time, never stale.
* :class:`RemoteJwks` — ``url`` / ``discovery``; fetched in ``start()`` and then every
  ``refresh_interval_seconds`` by a background task (failures retry with capped, jittered backoff),
  every request under the process's outbound policy (:mod:`extauthz.outbound`: https off
  loopback, no redirects by default and never https -> http, proxies, CA bundle). One fetch
  (discovery and keys) is bounded by ``fetch_timeout_seconds``; a document is at most 1 MiB. A
  fetch that fails or yields no usable key keeps the previous keys (and, with discovery, a failed
  discovery falls back to the last good ``jwks_uri``). Keys keep verifying for
  ``max_stale_seconds`` after the last *successful* fetch; past that, and before the first
  success, :meth:`~JwksSource.keys_at` raises ``DependencyUnavailable(jwks_unavailable)`` (503).
  :meth:`~JwksSource.refetch` (used on an unknown ``kid``) is rate-limited to one per
  ``min_refetch_interval_seconds``, de-duplicated (every caller joins the one in-flight fetch),
  and waited for at most ``refetch_wait_seconds``: the check then answers from the keys it has
  while the fetch finishes in the background. On a reload, :meth:`RemoteJwks.adopt` carries the
  last good keys over to the new configuration's source for the same issuer and location.

Cache invalidation: a refresh that returns a key identical to one already held (same kid, type and
public material) reuses the existing :class:`JwkKey` object, so a verified-token cache can pin the
key object it verified with and check ``key in keyset.live`` — a key dropped from the set at a
refresh invalidates exactly the tokens it signed, nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from extauthz import tracing
from extauthz.authn.reload_state import ReloadState
from extauthz.clock import Clock
from extauthz.config.schema import JwtSpec
from extauthz.errors import DependencyUnavailable, Reason
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundError, OutboundPolicy
from extauthz.tracing import safe_url
from extauthz.types import AuthMethod

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("extauthz.jwks")

#: largest JWKS / discovery document accepted from the network
MAX_DOCUMENT_BYTES = 1024 * 1024
#: keys beyond this many in one set are ignored
MAX_KEYS = 256
#: different keys under one (kid, alg) that a token is tried against; more are skipped
MAX_KEYS_PER_KID = 4
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
#: cap of the retry backoff after failed fetches (further capped by the refresh interval)
MAX_BACKOFF_SECONDS = 60.0

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
#: verify(signing_input, signature) -> True iff the signature is valid
Verifier = Callable[[bytes, bytes], bool]

#: RSA algorithms: alg -> (hash, PSS?)
_RSA_ALGS: Mapping[str, tuple[hashes.HashAlgorithm, bool]] = {
    "RS256": (hashes.SHA256(), False),
    "RS384": (hashes.SHA384(), False),
    "RS512": (hashes.SHA512(), False),
    "PS256": (hashes.SHA256(), True),
    "PS384": (hashes.SHA384(), True),
    "PS512": (hashes.SHA512(), True),
}
#: EC curves: crv -> (curve, coordinate size in bytes, the one alg defined on it, its hash)
_EC_CURVES: Mapping[str, tuple[ec.EllipticCurve, int, str, hashes.HashAlgorithm]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256", hashes.SHA256()),
    "P-384": (ec.SECP384R1(), 48, "ES384", hashes.SHA384()),
    "P-521": (ec.SECP521R1(), 66, "ES512", hashes.SHA512()),
}
#: OKP curves (EdDSA, RFC 8037): crv -> public key size in bytes
_OKP_SIZES: Mapping[str, int] = {"Ed25519": 32, "Ed448": 57}

#: Every algorithm extauthz can verify. Anything else (``none``, ``HS*``, unknown) is refused.
ALGORITHMS: frozenset[str] = frozenset([*_RSA_ALGS, *(c[2] for c in _EC_CURVES.values()), "EdDSA"])
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(data: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): alphabet, length and canonical trailing
    bits are checked, so one byte string has exactly one accepted encoding."""
    if len(data) % 4 == 1 or not _B64URL.fullmatch(data):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != data.encode("ascii"):
        raise ValueError("non-canonical base64url")
    return raw


def _b64url_member(jwk: Mapping[str, Any], name: str) -> bytes:
    """A base64url member of a JWK; tolerates ``=`` padding some issuers add."""
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise _Skip(f"'{name}' missing or not a string")
    try:
        return b64url_decode(value.rstrip("="))
    except ValueError:
        raise _Skip(f"'{name}' is not base64url") from None


# --------------------------------------------------------------------------------------- verifiers


def _rsa_verifier(key: rsa.RSAPublicKey, hash_alg: hashes.HashAlgorithm, *, pss: bool) -> Verifier:
    size = (key.key_size + 7) // 8
    pad: padding.AsymmetricPadding = (
        # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output.
        padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        if pss
        else padding.PKCS1v15()
    )

    def verify(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            key.verify(signature, signing_input, pad, hash_alg)
        except InvalidSignature:
            return False
        return True

    return verify


def _ecdsa_verifier(
    key: ec.EllipticCurvePublicKey, hash_alg: hashes.HashAlgorithm, coord: int
) -> Verifier:
    sig_alg = ec.ECDSA(hash_alg)

    def verify(signing_input: bytes, signature: bytes) -> bool:
        # JWS carries R || S, each exactly the coordinate size (RFC 7518 §3.4), not DER.
        if len(signature) != 2 * coord:
            return False
        r = int.from_bytes(signature[:coord], "big")
        s = int.from_bytes(signature[coord:], "big")
        if r == 0 or s == 0:
            return False
        try:
            key.verify(encode_dss_signature(r, s), signing_input, sig_alg)
        except InvalidSignature:
            return False
        return True

    return verify


def _eddsa_verifier(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verifier:
    def verify(signing_input: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True

    return verify


# ------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True, eq=False)
class JwkKey:
    """One usable verification key. Compared and hashed by identity (see module docstring)."""

    kid: str | None
    kty: str
    crv: str | None
    #: the pinned algorithms this key may verify (never empty)
    algorithms: frozenset[str]
    public_key: PublicKey = field(repr=False)
    #: equal for two JWKs that describe the same key in the same way
    fingerprint: tuple[Any, ...] = field(repr=False)
    verifiers: Mapping[str, Verifier] = field(repr=False)

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is valid for ``signing_input`` under ``alg`` with this key."""
        verifier = self.verifiers.get(alg)
        return verifier is not None and verifier(signing_input, signature)


class _Skip(Exception):
    """A JWK that is not used; the message says why (never key material)."""


def _parse_key(jwk: object, allowed: frozenset[str]) -> tuple[JwkKey | None, tuple[Any, ...]]:
    """Parse one JWK; returns the key (``None`` if its algorithms are not pinned) and its
    fingerprint; raises :class:`_Skip` for a key that must not be used."""
    if not isinstance(jwk, dict):
        raise _Skip("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _Skip("'kid' is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise _Skip("'use' is not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise _Skip("'key_ops' does not include 'verify'")
    kty = jwk.get("kty")
    if kty == "oct":
        raise _Skip("symmetric (oct) keys are never used")
    if kty not in ("RSA", "EC", "OKP"):
        raise _Skip("unsupported 'kty'")
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise _Skip("contains private key material (refused: the issuer's key may be leaked)")

    public_key: PublicKey
    make: Callable[[str], Verifier]
    crv: str | None = None
    try:
        if kty == "RSA":
            n = int.from_bytes(_b64url_member(jwk, "n"), "big")
            e = int.from_bytes(_b64url_member(jwk, "e"), "big")
            if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
                raise _Skip(f"RSA modulus must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
            rsa_key = rsa.RSAPublicNumbers(e, n).public_key()
            public_key = rsa_key
            family: frozenset[str] = frozenset(_RSA_ALGS)
            material: tuple[Any, ...] = (n, e)

            def make(alg: str) -> Verifier:
                hash_alg, pss = _RSA_ALGS[alg]
                return _rsa_verifier(rsa_key, hash_alg, pss=pss)

        elif kty == "EC":
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in _EC_CURVES:
                raise _Skip("unsupported EC 'crv'")
            curve, size, curve_alg, hash_alg = _EC_CURVES[crv]
            x = _b64url_member(jwk, "x")
            y = _b64url_member(jwk, "y")
            if len(x) != size or len(y) != size:
                raise _Skip("EC coordinates have the wrong length for the curve")
            # from_encoded_point checks that the point is on the curve.
            ec_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
            public_key = ec_key
            family = frozenset({curve_alg})
            material = (crv, x, y)

            def make(alg: str) -> Verifier:
                return _ecdsa_verifier(ec_key, hash_alg, size)

        else:
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in _OKP_SIZES:
                raise _Skip("unsupported OKP 'crv'")
            x = _b64url_member(jwk, "x")
            if len(x) != _OKP_SIZES[crv]:
                raise _Skip("OKP 'x' has the wrong length for the curve")
            ed_key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
            if crv == "Ed25519":
                ed_key = ed25519.Ed25519PublicKey.from_public_bytes(x)
            else:
                ed_key = ed448.Ed448PublicKey.from_public_bytes(x)
            public_key = ed_key
            family = frozenset({"EdDSA"})
            material = (crv, x)

            def make(alg: str) -> Verifier:
                return _eddsa_verifier(ed_key)

    except (ValueError, UnsupportedAlgorithm):
        raise _Skip("invalid key material") from None

    jwk_alg = jwk.get("alg")
    if jwk_alg is not None:
        if not isinstance(jwk_alg, str) or jwk_alg not in family:  # a list/object: unhashable
            raise _Skip("'alg' conflicts with the key type")
        family = frozenset({jwk_alg})
    usable = family & allowed
    fingerprint = (kid, kty, *material, tuple(sorted(usable)))
    if not usable:
        return None, fingerprint
    verifiers = {alg: make(alg) for alg in sorted(usable)}
    key = JwkKey(kid, kty, crv, usable, public_key, fingerprint, verifiers)
    return key, fingerprint


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable set of usable keys with lookup indexes built once."""

    keys: tuple[JwkKey, ...]
    #: what was skipped while parsing, for logs (``keys[3] (kid 'x'): reason``)
    skipped: tuple[str, ...] = ()
    #: changes whenever the set of keys changes (not on a refresh that returns the same keys)
    generation: int = 0
    live: frozenset[JwkKey] = field(init=False, repr=False)
    _by_kid_alg: dict[tuple[str, str], tuple[JwkKey, ...]] = field(init=False, repr=False)
    _by_alg: dict[str, tuple[JwkKey, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_kid_alg: dict[tuple[str, str], list[JwkKey]] = {}
        by_alg: dict[str, list[JwkKey]] = {}
        for key in self.keys:
            for alg in key.algorithms:
                by_alg.setdefault(alg, []).append(key)
                if key.kid is not None:
                    by_kid_alg.setdefault((key.kid, alg), []).append(key)
        object.__setattr__(self, "live", frozenset(self.keys))
        object.__setattr__(self, "_by_kid_alg", {k: tuple(v) for k, v in by_kid_alg.items()})
        object.__setattr__(self, "_by_alg", {a: tuple(ks) for a, ks in by_alg.items()})

    def candidates(self, kid: str | None, alg: str) -> tuple[JwkKey, ...]:
        """The keys to try for a token header: every key with ``(kid, alg)`` (several only when
        the issuer publishes one kid more than once, see the module docstring); without a kid,
        the one key usable for ``alg`` if there is exactly one (several need a kid: none)."""
        if kid is not None:
            return self._by_kid_alg.get((kid, alg), ())
        found = self._by_alg.get(alg, ())
        return found if len(found) == 1 else ()

    def lookup(self, kid: str | None, alg: str) -> JwkKey | None:
        """The first of :meth:`candidates` (``None`` if there is none)."""
        found = self.candidates(kid, alg)
        return found[0] if found else None

    def count(self, alg: str) -> int:
        """How many keys can verify ``alg``."""
        return len(self._by_alg.get(alg, ()))

    @property
    def fingerprints(self) -> frozenset[tuple[Any, ...]]:
        return frozenset(k.fingerprint for k in self.keys)


def parse_jwks(
    document: object, algorithms: Iterable[str], previous: KeySet | None = None
) -> KeySet:
    """Parse a JWK Set document into a :class:`KeySet` of the keys usable with ``algorithms``.

    Keys identical to one in ``previous`` are reused (same object); if the resulting set is the
    same as ``previous``, ``previous`` itself is returned. Raises ``ValueError`` only when the
    document is not a JWK Set at all; an empty result is for the caller to judge.
    """
    allowed = frozenset(algorithms)
    unknown = allowed - ALGORITHMS
    if unknown:
        raise ValueError(f"unsupported algorithms: {sorted(unknown)}")
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("expected a JWK Set: a JSON object with a 'keys' array")
    entries: list[Any] = document["keys"]
    reuse = {k.fingerprint: k for k in previous.keys} if previous is not None else {}
    keys: list[JwkKey] = []
    skipped: list[str] = []
    seen_fingerprints: set[tuple[Any, ...]] = set()
    kid_algs: dict[tuple[str, str], int] = {}
    for index, jwk in enumerate(entries):
        label = f"keys[{index}]"
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
            label += f" (kid {jwk['kid'][:64]!r})"
        if index >= MAX_KEYS:
            skipped.append(f"{label}: more than {MAX_KEYS} keys")
            continue
        try:
            key, fingerprint = _parse_key(jwk, allowed)
        except _Skip as skip:
            skipped.append(f"{label}: {skip}")
            continue
        if key is None:
            skipped.append(f"{label}: not usable with the pinned algorithms")
            continue
        if fingerprint in seen_fingerprints:
            skipped.append(f"{label}: duplicate key")
            continue
        if key.kid is not None and any(
            kid_algs.get((key.kid, a), 0) >= MAX_KEYS_PER_KID for a in key.algorithms
        ):
            skipped.append(
                f"{label}: more than {MAX_KEYS_PER_KID} keys with this 'kid' for one algorithm"
            )
            continue
        seen_fingerprints.add(fingerprint)
        if key.kid is not None:
            for a in key.algorithms:
                kid_algs[(key.kid, a)] = kid_algs.get((key.kid, a), 0) + 1
        keys.append(reuse.get(fingerprint, key))
    if previous is not None and previous.fingerprints == seen_fingerprints:
        if previous.skipped == tuple(skipped):
            return previous
        return KeySet(previous.keys, tuple(skipped), previous.generation)
    generation = previous.generation + 1 if previous is not None else 1
    return KeySet(tuple(keys), tuple(skipped), generation)


def _strict_json(data: bytes | str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(data, parse_constant=no_constants)


def load_static_keyset(document: object, algorithms: Iterable[str], what: str) -> KeySet:
    """Parse a configured (file or inline) JWKS; ``ValueError`` when it yields no usable key."""
    keyset = parse_jwks(document, algorithms)
    if not keyset.keys:
        reasons = "; ".join(keyset.skipped[:5]) or "the set is empty"
        raise ValueError(f"{what} has no usable key ({reasons})")
    return keyset


# ---------------------------------------------------------------------------------------- sources


class JwksSource(Protocol):
    """Where a :class:`~extauthz.authn.jwt.JwtAuthenticator` gets its keys."""

    @property
    def keyset(self) -> KeySet | None:
        """The current keys, or ``None`` before the first successful load."""
        ...

    def keys_at(self, now: float) -> KeySet:
        """The keys usable at ``now``; raises ``DependencyUnavailable`` when there are none or they
        are too stale."""
        ...

    async def refetch(self) -> bool:
        """Try to get newer keys after an unknown ``kid`` (rate-limited, de-duplicated)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class StaticJwks:
    """Keys from the configuration (``file`` or ``inline``): loaded once, never stale."""

    def __init__(self, keyset: KeySet, *, issuer: str, metrics: Metrics) -> None:
        self._keyset = keyset
        metrics.jwks_keys.labels(issuer=issuer).set(len(keyset.keys))

    @property
    def keyset(self) -> KeySet:
        return self._keyset

    def keys_at(self, now: float) -> KeySet:
        return self._keyset

    async def refetch(self) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class _FetchError(OutboundError):
    """A fetch failed; ``result`` is its jwks_fetches label (error, timeout, invalid, refused)."""


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 §4: a trailing ``/`` of the issuer is removed first."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@dataclass(slots=True)
class LastGoodKeys:
    """The last keys fetched for one source key, and when (a ReloadState cell: a reload during
    an IdP outage starts with them instead of with nothing)."""

    keyset: KeySet | None = None
    fetched_at: float = -math.inf
    #: the last good discovery result (``jwks_uri``)
    jwks_uri: str | None = None

    def remember(self, keyset: KeySet, fetched_at: float, jwks_uri: str | None) -> None:
        """Record a successful fetch."""
        self.keyset, self.fetched_at, self.jwks_uri = keyset, fetched_at, jwks_uri


class RemoteJwks:
    """Keys fetched over HTTP(S) from ``url`` or via OpenID Connect discovery of ``issuer``.

    Every request goes through the process's :class:`~extauthz.outbound.OutboundPolicy` (https,
    redirects, proxies, CA bundle). A fetch (discovery and keys together) is bounded by
    ``fetch_timeout``; a check that meets an unknown ``kid`` waits for the refetch at most
    ``refetch_wait`` (the fetch goes on in the background, single-flight and rate-limited).
    """

    def __init__(
        self,
        *,
        issuer: str,
        algorithms: Iterable[str],
        url: str | None = None,
        discovery: bool = False,
        refresh_interval: float = 300.0,
        max_stale: float = 3600.0,
        fetch_timeout: float = 0.5,
        min_refetch_interval: float = 10.0,
        refetch_wait: float = 0.25,
        clock: Clock,
        metrics: Metrics,
        policy: OutboundPolicy | None = None,
        carried: LastGoodKeys | None = None,
    ) -> None:
        if (url is None) == (not discovery):
            raise ValueError("set exactly one of url and discovery")
        if url is not None and not _http_url(url):
            raise ValueError("jwks url must be an absolute http(s) URL")
        if discovery and not _http_url(issuer):
            raise ValueError("discovery needs an issuer that is an absolute http(s) URL")
        self.issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._url = url
        self._discovery = discovery
        self._refresh_interval = refresh_interval
        self._max_stale = max_stale
        self._fetch_timeout = fetch_timeout
        self._min_refetch = min_refetch_interval
        self._refetch_wait = refetch_wait
        self._clock = clock
        self._policy = policy if policy is not None else OutboundPolicy()
        self._fetches = metrics.jwks_fetches
        self._age = metrics.jwks_age.labels(issuer=issuer)
        self._key_count = metrics.jwks_keys.labels(issuer=issuer)
        self._keyset: KeySet | None = None
        self._last_success = -math.inf
        self._stale_deadline = -math.inf
        self._next_refetch = -math.inf
        #: the last good discovery result (``jwks_uri``), used when discovery alone fails
        self._jwks_uri: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: what every source of this :attr:`source_key` fetched last (kept across reloads)
        self._carried = carried if carried is not None else LastGoodKeys()

    # -- identity across reloads --------------------------------------------------------------

    @property
    def source_key(self) -> tuple[str, str | None, bool, frozenset[str]]:
        """What makes two sources interchangeable: same issuer, URL/discovery, algorithms."""
        return (self.issuer, self._url, self._discovery, self._algorithms)

    def _adopt_carried(self) -> bool:
        """Take over the last good keys of the sources this one replaces on a reload.

        The process's :class:`~extauthz.authn.reload_state.ReloadState` keeps one
        :class:`LastGoodKeys` cell per :attr:`source_key`: every source with that key writes its
        fetches to it, whatever its authenticator's name. Taken only when newer than our own
        keys. The staleness deadline is computed from when *those* keys were fetched, with this
        source's ``max_stale``: a reload never makes old keys live longer. Called by
        :meth:`start` (which then does not block on a fetch).
        """
        carried = self._carried
        if carried.keyset is None or carried.fetched_at <= self._last_success:
            return False
        self._keyset = carried.keyset
        self._last_success = carried.fetched_at
        self._stale_deadline = carried.fetched_at + self._max_stale
        self._jwks_uri = carried.jwks_uri
        self._key_count.set(len(carried.keyset.keys))
        return True

    # -- read side (hot path) -----------------------------------------------------------------

    @property
    def keyset(self) -> KeySet | None:
        return self._keyset

    @property
    def last_success(self) -> float:
        """Clock time of the last successful fetch (``-inf`` if none yet)."""
        return self._last_success

    def keys_at(self, now: float) -> KeySet:
        keyset = self._keyset
        if keyset is None:
            raise DependencyUnavailable(
                Reason.JWKS_UNAVAILABLE,
                "signing keys unavailable",
                f"no JWKS fetched yet for issuer {self.issuer}",
            )
        if now > self._stale_deadline:
            raise DependencyUnavailable(
                Reason.JWKS_UNAVAILABLE,
                "signing keys unavailable",
                f"JWKS of issuer {self.issuer} is stale "
                f"({now - self._last_success:.0f}s since the last successful fetch)",
            )
        self._age.set(now - self._last_success)
        return keyset

    # -- fetching ----------------------------------------------------------------------------

    def _spawn(self) -> asyncio.Task[bool]:
        """The in-flight fetch, started if there is none (single-flight)."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(self._fetch(), name=f"jwks-fetch:{self.issuer}")
            self._inflight = task
        return task

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch already in flight); True iff it succeeded."""
        if self._closed:
            return False
        return await asyncio.shield(self._spawn())

    async def refetch(self) -> bool:
        """After an unknown ``kid``: join or start (at most once per ``min_refetch_interval``)
        a fetch, and wait for it at most ``refetch_wait`` seconds. True iff a fetch finished
        successfully within that time; the fetch itself always runs to its own end."""
        if self._closed:
            return False
        task = self._inflight
        if task is None or task.done():
            now = self._clock()
            if now < self._next_refetch:
                return False
            self._next_refetch = now + self._min_refetch
            task = self._spawn()
        if self._refetch_wait <= 0:
            return False
        done, _ = await asyncio.wait((task,), timeout=self._refetch_wait)
        return bool(done) and not task.cancelled() and task.exception() is None and task.result()

    async def _fetch(self) -> bool:
        try:
            async with asyncio.timeout(self._fetch_timeout):
                keyset = await self._download()
        except TimeoutError:
            return self._failed(_FetchError("timeout", "fetch timed out"))
        except OutboundError as err:
            return self._failed(err)
        except Exception:
            self._fetches.labels(issuer=self.issuer, result="error").inc()
            log.exception("JWKS fetch for issuer %s failed unexpectedly", self.issuer)
            self._update_age()
            return False
        self._install(keyset)
        self._fetches.labels(issuer=self.issuer, result="ok").inc()
        return True

    def _failed(self, err: OutboundError) -> bool:
        self._fetches.labels(issuer=self.issuer, result=err.result).inc()
        log.warning("JWKS fetch for issuer %s failed (%s): %s", self.issuer, err.result, err)
        self._update_age()
        return False

    async def _download(self) -> KeySet:
        if self._session is None or self._session.closed:
            self._session = self._policy.session(self._fetch_timeout)
        session = self._session
        url = self._url
        if self._discovery:
            try:
                url = await self._discover(session)
            except OutboundError as err:
                if self._jwks_uri is None:
                    raise
                # The last good discovery result still names the keys' location.
                log.warning("OIDC discovery for issuer %s failed (%s); using the last good "
                            "jwks_uri", self.issuer, err)
                url = self._jwks_uri
        if url is None:  # unreachable: the constructor requires url or discovery
            raise _FetchError("invalid", "no JWKS url")
        document = await self._get_json(session, url)
        try:
            keyset = parse_jwks(document, self._algorithms, self._keyset)
        except ValueError as err:
            raise _FetchError("invalid", str(err)) from None
        if not keyset.keys:
            reasons = "; ".join(keyset.skipped[:5]) or "the set is empty"
            raise _FetchError("invalid", f"no usable key ({reasons})")
        if self._discovery:
            self._jwks_uri = url
        return keyset

    async def _discover(self, session: aiohttp.ClientSession) -> str:
        meta = await self._get_json(session, discovery_url(self.issuer))
        if not isinstance(meta, dict):
            raise _FetchError("invalid", "discovery document is not a JSON object")
        if meta.get("issuer") != self.issuer:
            raise _FetchError("invalid", "discovery document names a different issuer (refused)")
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _http_url(jwks_uri):
            raise _FetchError("invalid", "discovery document has no valid jwks_uri")
        if self.issuer.startswith("https:") and not jwks_uri.startswith("https:"):
            raise _FetchError("refused", "jwks_uri downgrades an https issuer to http")
        problem = self._policy.url_problem(jwks_uri)
        if problem is not None:
            raise _FetchError("refused", f"jwks_uri {safe_url(jwks_uri)}: {problem}")
        return jwks_uri

    @tracing.outbound_span("jwks.fetch",
                           lambda _self, _session, url: {"url.full": safe_url(url)})
    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        status, body = await self._policy.fetch(
            session, "GET", url, timeout=self._fetch_timeout, max_bytes=MAX_DOCUMENT_BYTES,
            headers={"Accept": "application/json"},
        )
        if status != 200:
            raise _FetchError("error", f"GET {safe_url(url)}: HTTP {status}")
        try:
            return _strict_json(body)
        except (ValueError, RecursionError):
            raise _FetchError("invalid", f"GET {safe_url(url)}: not valid JSON") from None

    def _install(self, keyset: KeySet) -> None:
        previous = self._keyset
        now = self._clock()
        self._keyset = keyset
        self._last_success = now
        self._stale_deadline = now + self._max_stale
        self._carried.remember(keyset, now, self._jwks_uri)
        self._age.set(0)
        self._key_count.set(len(keyset.keys))
        if previous is None or keyset.generation != previous.generation:
            log.info(
                "JWKS for issuer %s: %d usable key(s) %s",
                self.issuer,
                len(keyset.keys),
                sorted(k.kid or "-" for k in keyset.keys),
            )
            if keyset.skipped:
                log.warning(
                    "JWKS for issuer %s: skipped %d key(s): %s",
                    self.issuer,
                    len(keyset.skipped),
                    "; ".join(keyset.skipped),
                )

    def _update_age(self) -> None:
        if self._keyset is not None:
            self._age.set(self._clock() - self._last_success)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch once (a failure is logged, never raised) and start the refresh loop.

        With keys taken over from the previous configuration (:meth:`_adopt_carried`), the first
        fetch runs in the background instead: a reload during an IdP outage does not wait for it.
        """
        if self._task is not None or self._closed:
            return
        self._adopt_carried()
        if self._keyset is not None:
            age = self._clock() - self._last_success
            first = max(0.0, self._refresh_interval - age)
            self._task = asyncio.create_task(
                self._run(True, first), name=f"jwks-refresh:{self.issuer}"
            )
            return
        ok = await self.refresh()
        if not ok:
            log.warning(
                "JWKS for issuer %s unavailable at start; retrying in the background", self.issuer
            )
        self._task = asyncio.create_task(self._run(ok), name=f"jwks-refresh:{self.issuer}")

    async def _run(self, ok: bool, first_delay: float | None = None) -> None:
        failures = 0 if ok else 1
        delay_override = first_delay
        while True:
            if delay_override is not None:
                delay, delay_override = delay_override, None
            elif failures == 0:
                delay = self._refresh_interval * random.uniform(0.9, 1.0)  # noqa: S311
            else:
                backoff = min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1))
                delay = min(self._refresh_interval, backoff) * random.uniform(0.8, 1.0)  # noqa: S311
            await asyncio.sleep(delay)
            failures = 0 if await self.refresh() else failures + 1

    async def close(self) -> None:
        """Stop the refresh loop, let an in-flight fetch finish (bounded), release the session."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            _, pending = await asyncio.wait([inflight], timeout=self._fetch_timeout * 2 + 1)
            for p in pending:
                p.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


def jwks_source_from_spec(
    spec: JwtSpec,
    *,
    base_dir: Path,
    clock: Clock,
    metrics: Metrics,
    policy: OutboundPolicy | None = None,
    reload_state: ReloadState | None = None,
) -> StaticJwks | RemoteJwks:
    """Build the key source of ``spec``; file reads happen here. ``ValueError`` on bad input.

    ``reload_state``: the process's carry-over store; a remote source takes the last good keys
    of its :attr:`RemoteJwks.source_key` from it when it starts."""
    source = spec.jwks
    algorithms = list(spec.algorithms)
    if source.file is not None:
        path = Path(source.file)
        if not path.is_absolute():
            path = base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(
                f"cannot read JWKS file {str(path)!r}: {err.strerror or type(err).__name__}"
            ) from None
        except UnicodeDecodeError:
            raise ValueError(f"JWKS file {str(path)!r} is not UTF-8") from None
        try:
            document = _strict_json(text)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"JWKS file {str(path)!r} is not valid JSON: {err}") from None
        keyset = load_static_keyset(document, algorithms, f"JWKS file {str(path)!r}")
        return StaticJwks(keyset, issuer=spec.issuer, metrics=metrics)
    if source.inline is not None:
        keyset = load_static_keyset(source.inline, algorithms, "inline JWKS")
        return StaticJwks(keyset, issuer=spec.issuer, metrics=metrics)
    if spec.max_stale_seconds < spec.refresh_interval_seconds:
        raise ValueError(
            "max_stale_seconds must be at least refresh_interval_seconds "
            "(otherwise keys go stale between two refreshes)"
        )
    policy = policy if policy is not None else OutboundPolicy()
    reload_state = reload_state if reload_state is not None else ReloadState()
    if source.url is not None:
        policy.check_url(source.url, "jwks.url")
    else:
        policy.check_url(discovery_url(spec.issuer), "issuer (OIDC discovery)")
    return RemoteJwks(
        issuer=spec.issuer,
        algorithms=algorithms,
        url=source.url,
        discovery=source.discovery,
        refresh_interval=spec.refresh_interval_seconds,
        max_stale=spec.max_stale_seconds,
        fetch_timeout=spec.fetch_timeout_seconds,
        min_refetch_interval=spec.min_refetch_interval_seconds,
        refetch_wait=spec.refetch_wait_seconds,
        clock=clock,
        metrics=metrics,
        policy=policy,
        carried=reload_state.cell(
            AuthMethod.JWT, (spec.issuer, source.url, source.discovery, frozenset(algorithms)),
            LastGoodKeys, LastGoodKeys),
    )
