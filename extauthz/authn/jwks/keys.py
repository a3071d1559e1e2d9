"""Parsing JWK Sets into immutable, pre-verified keys (PyJWT style: one small check per concern).

:func:`parse_jwks` turns a JWK Set into immutable :class:`JwkKey` objects, each bound at parse time
to the algorithms it may verify and to one prepared verifier per algorithm. A key is *skipped*
(and the reason recorded, never its material) when it is malformed, is not a signing key (``use``
other than ``sig``, ``key_ops`` without ``verify``), has an unknown or symmetric ``kty``, declares
an ``alg`` that conflicts with its type, carries private key material (a leaked private key must
never be trusted), is an RSA key under 2048 bits, repeats a ``kid`` already seen for the same
algorithms, or is usable with none of the issuer's pinned algorithms. Good keys next to skipped
ones keep working.

A parse that returns a key identical to one already held (same kid, type and public material)
reuses the existing :class:`JwkKey` object, so a verified-token cache can pin the key object it
verified with and check ``key in keyset.live``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from extauthz.authn.jwks.verifiers import (
    ALGORITHMS,
    EC_CURVES,
    OKP_SIZES,
    RSA_ALGS,
    PublicKey,
    Verifier,
    b64url_decode,
    ecdsa_verifier,
    eddsa_verifier,
    rsa_verifier,
)

__all__ = ["MAX_KEYS", "MAX_KEYS_PER_KID", "JwkKey", "KeySet", "load_static_keyset",
           "parse_jwks", "strict_json"]

#: keys beyond this many in one set are ignored
MAX_KEYS = 256
#: different keys under one (kid, alg) that a token is tried against; more are skipped
MAX_KEYS_PER_KID = 4
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


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


def _b64url_member(jwk: Mapping[str, Any], name: str) -> bytes:
    """A base64url member of a JWK; tolerates ``=`` padding some issuers add."""
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise _Skip(f"'{name}' missing or not a string")
    try:
        return b64url_decode(value.rstrip("="))
    except ValueError:
        raise _Skip(f"'{name}' is not base64url") from None


@dataclass(frozen=True, slots=True)
class _Material:
    """The public key of one JWK and what it may verify before pinning."""

    public_key: PublicKey
    #: the algorithms its type allows
    family: frozenset[str]
    #: the public material, for the fingerprint
    material: tuple[Any, ...]
    make: Callable[[str], Verifier]
    crv: str | None = None


def _validate_jwk(jwk: object) -> dict[str, Any]:
    """A JSON object describing a public signing key of a supported type, else :class:`_Skip`."""
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
    if not isinstance(kty, str) or kty not in _PARSERS:  # (a list or object is unhashable)
        raise _Skip("unsupported 'kty'")
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise _Skip("contains private key material (refused: the issuer's key may be leaked)")
    return jwk


def _parse_rsa(jwk: Mapping[str, Any]) -> _Material:
    n = int.from_bytes(_b64url_member(jwk, "n"), "big")
    e = int.from_bytes(_b64url_member(jwk, "e"), "big")
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise _Skip(f"RSA modulus must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
    key = rsa.RSAPublicNumbers(e, n).public_key()

    def make(alg: str) -> Verifier:
        hash_alg, pss = RSA_ALGS[alg]
        return rsa_verifier(key, hash_alg, pss=pss)

    return _Material(key, frozenset(RSA_ALGS), (n, e), make)


def _parse_ec(jwk: Mapping[str, Any]) -> _Material:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in EC_CURVES:
        raise _Skip("unsupported EC 'crv'")
    curve, size, curve_alg, hash_alg = EC_CURVES[crv]
    x = _b64url_member(jwk, "x")
    y = _b64url_member(jwk, "y")
    if len(x) != size or len(y) != size:
        raise _Skip("EC coordinates have the wrong length for the curve")
    # from_encoded_point checks that the point is on the curve.
    key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)

    def make(alg: str) -> Verifier:
        return ecdsa_verifier(key, hash_alg, size)

    return _Material(key, frozenset({curve_alg}), (crv, x, y), make, crv)


def _parse_okp(jwk: Mapping[str, Any]) -> _Material:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in OKP_SIZES:
        raise _Skip("unsupported OKP 'crv'")
    x = _b64url_member(jwk, "x")
    if len(x) != OKP_SIZES[crv]:
        raise _Skip("OKP 'x' has the wrong length for the curve")
    key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    if crv == "Ed25519":
        key = ed25519.Ed25519PublicKey.from_public_bytes(x)
    else:
        key = ed448.Ed448PublicKey.from_public_bytes(x)

    def make(alg: str) -> Verifier:
        return eddsa_verifier(key)

    return _Material(key, frozenset({"EdDSA"}), (crv, x), make, crv)


_PARSERS: Mapping[str, Callable[[Mapping[str, Any]], _Material]] = {
    "RSA": _parse_rsa, "EC": _parse_ec, "OKP": _parse_okp,
}


def _validate_alg(jwk_alg: object, family: frozenset[str]) -> frozenset[str]:
    """A JWK's own ``alg`` narrows its type's family to that one algorithm (and must be in it)."""
    if jwk_alg is None:
        return family
    if not isinstance(jwk_alg, str) or jwk_alg not in family:  # a list/object: unhashable
        raise _Skip("'alg' conflicts with the key type")
    return frozenset({jwk_alg})


def _parse_key(jwk: object, allowed: frozenset[str]) -> tuple[JwkKey | None, tuple[Any, ...]]:
    """Parse one JWK; returns the key (``None`` if its algorithms are not pinned) and its
    fingerprint; raises :class:`_Skip` for a key that must not be used."""
    checked = _validate_jwk(jwk)
    kid, kty = checked.get("kid"), checked["kty"]
    try:
        material = _PARSERS[kty](checked)
    except (ValueError, UnsupportedAlgorithm):
        raise _Skip("invalid key material") from None
    usable = _validate_alg(checked.get("alg"), material.family) & allowed
    fingerprint = (kid, kty, *material.material, tuple(sorted(usable)))
    if not usable:
        return None, fingerprint
    verifiers = {alg: material.make(alg) for alg in sorted(usable)}
    key = JwkKey(kid, kty, material.crv, usable, material.public_key, fingerprint, verifiers)
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


class _Collector:
    """The keys of one JWK Set as they are admitted, and why the others were skipped."""

    def __init__(self, allowed: frozenset[str], previous: KeySet | None) -> None:
        self._allowed = allowed
        self._reuse = {k.fingerprint: k for k in previous.keys} if previous is not None else {}
        self.keys: list[JwkKey] = []
        self.skipped: list[str] = []
        self.fingerprints: set[tuple[Any, ...]] = set()
        self._kid_algs: dict[tuple[str, str], int] = {}

    def add(self, index: int, jwk: object) -> None:
        """Admit the JWK at ``index``, or record why not."""
        label = f"keys[{index}]"
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
            label += f" (kid {jwk['kid'][:64]!r})"
        try:
            key = self._admit(index, jwk)
        except _Skip as skip:
            self.skipped.append(f"{label}: {skip}")
            return
        self.fingerprints.add(key.fingerprint)
        if key.kid is not None:
            for a in key.algorithms:
                self._kid_algs[(key.kid, a)] = self._kid_algs.get((key.kid, a), 0) + 1
        self.keys.append(self._reuse.get(key.fingerprint, key))

    def _admit(self, index: int, jwk: object) -> JwkKey:
        if index >= MAX_KEYS:
            raise _Skip(f"more than {MAX_KEYS} keys")
        key, fingerprint = _parse_key(jwk, self._allowed)
        if key is None:
            raise _Skip("not usable with the pinned algorithms")
        if fingerprint in self.fingerprints:
            raise _Skip("duplicate key")
        if key.kid is not None and any(
            self._kid_algs.get((key.kid, a), 0) >= MAX_KEYS_PER_KID for a in key.algorithms
        ):
            raise _Skip(f"more than {MAX_KEYS_PER_KID} keys with this 'kid' for one algorithm")
        return key

    def keyset(self, previous: KeySet | None) -> KeySet:
        """The parsed set; ``previous`` itself (or its keys) when nothing changed."""
        if previous is not None and previous.fingerprints == self.fingerprints:
            if previous.skipped == tuple(self.skipped):
                return previous
            return KeySet(previous.keys, tuple(self.skipped), previous.generation)
        generation = previous.generation + 1 if previous is not None else 1
        return KeySet(tuple(self.keys), tuple(self.skipped), generation)


def _validate_algorithms(algorithms: Iterable[str]) -> frozenset[str]:
    allowed = frozenset(algorithms)
    unknown = allowed - ALGORITHMS
    if unknown:
        raise ValueError(f"unsupported algorithms: {sorted(unknown)}")
    return allowed


def parse_jwks(
    document: object, algorithms: Iterable[str], previous: KeySet | None = None
) -> KeySet:
    """Parse a JWK Set document into a :class:`KeySet` of the keys usable with ``algorithms``.

    Keys identical to one in ``previous`` are reused (same object); if the resulting set is the
    same as ``previous``, ``previous`` itself is returned. Raises ``ValueError`` only when the
    document is not a JWK Set at all; an empty result is for the caller to judge.
    """
    allowed = _validate_algorithms(algorithms)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("expected a JWK Set: a JSON object with a 'keys' array")
    collector = _Collector(allowed, previous)
    for index, jwk in enumerate(document["keys"]):
        collector.add(index, jwk)
    return collector.keyset(previous)


def strict_json(data: bytes | str) -> Any:
    """JSON without the non-standard constants (``NaN``, ``Infinity``)."""
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


