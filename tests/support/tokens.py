"""Keys, JWK Sets and tokens for tests (unit, gRPC and end-to-end).

Signatures are produced by PyJWT's algorithm objects — an implementation independent of the
verifier under test — so a round trip proves interoperability, not just self-consistency.

    key = rsa_key("k1")                       # cached per arguments: cheap to call again
    doc = jwks(key, ec_key("k2"))             # {"keys": [...public JWKs...]}
    tok = mint(key, claims(now=NOW))          # header {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    tok = mint(key, claims(now=NOW, exp=None), headers={"alg": "RS384"}, kid=None)
    bad = tamper(tok, sub="admin")            # payload changed, signature kept
    none = unsigned({"alg": "none"}, claims(now=NOW))
    hs = hmac_token(key.public_pem(), claims(now=NOW))   # the key-confusion attack token

Use :data:`ISSUER` / :data:`AUDIENCE` unless a test is about them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

ISSUER = "https://idp.example.com"
AUDIENCE = "api://orders"

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_EC_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "ES256": (ec.SECP256R1(), "P-256", 32),
    "ES384": (ec.SECP384R1(), "P-384", 48),
    "ES512": (ec.SECP521R1(), "P-521", 66),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


@dataclass(frozen=True)
class SigningKey:
    """A private key with its ``kid`` and default ``alg``."""

    kid: str | None
    alg: str
    private_key: PrivateKey

    def public_jwk(
        self, *, alg: bool = True, use: str | None = "sig", **extra: Any
    ) -> dict[str, Any]:
        """The public JWK (``alg``/``use`` members optional; ``extra`` members override)."""
        pub = self.private_key.public_key()
        jwk: dict[str, Any]
        if isinstance(pub, rsa.RSAPublicKey):
            numbers = pub.public_numbers()
            jwk = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            _, crv, size = _EC_CURVES[self.alg]
            numbers_ec = pub.public_numbers()
            jwk = {
                "kty": "EC",
                "crv": crv,
                "x": _int_b64(numbers_ec.x, size),
                "y": _int_b64(numbers_ec.y, size),
            }
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            crv = "Ed25519" if isinstance(pub, ed25519.Ed25519PublicKey) else "Ed448"
            jwk = {"kty": "OKP", "crv": crv, "x": b64url(raw)}
        if self.kid is not None:
            jwk["kid"] = self.kid
        if alg:
            jwk["alg"] = self.alg
        if use is not None:
            jwk["use"] = use
        jwk.update(extra)
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signing_input: bytes, alg: str | None = None) -> bytes:
        """A JWS signature of ``signing_input`` (R||S for ECDSA) made by PyJWT."""
        algorithm = jwt.get_algorithm_by_name(alg or self.alg)
        return algorithm.sign(signing_input, self.private_key)


@functools.cache
def rsa_key(kid: str | None = "rsa-1", alg: str = "RS256", bits: int = 2048) -> SigningKey:
    """An RSA key (RS*/PS*); cached per arguments because generation is slow."""
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


@functools.cache
def ec_key(kid: str | None = "ec-1", alg: str = "ES256") -> SigningKey:
    """An EC key on the curve of ``alg`` (ES256 -> P-256, ES384 -> P-384, ES512 -> P-521)."""
    return SigningKey(kid, alg, ec.generate_private_key(_EC_CURVES[alg][0]))


@functools.cache
def ed25519_key(kid: str | None = "ed-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


@functools.cache
def ed448_key(kid: str | None = "ed448-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", ed448.Ed448PrivateKey.generate())


def jwks(*keys: SigningKey | Any, alg: bool = True) -> dict[str, Any]:
    """A JWK Set of the public parts of ``keys``; anything that is not a :class:`SigningKey`
    (a JWK dict, or junk for malformed-key tests) is included as given."""
    return {
        "keys": [k.public_jwk(alg=alg) if isinstance(k, SigningKey) else k for k in keys],
    }


def claims(
    *,
    now: float,
    ttl: float | None = 300,
    issuer: str = ISSUER,
    audience: str | list[str] = AUDIENCE,
    subject: str = "user-1",
    **extra: Any,
) -> dict[str, Any]:
    """Standard claims: iss, aud, sub, iat=now, exp=now+ttl (``ttl=None``: no exp).

    ``extra`` adds or overrides claims; a value of ``None`` removes the claim.
    """
    out: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "iat": int(now)}
    if ttl is not None:
        out["exp"] = int(now + ttl)
    for name, value in extra.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _json_b64(value: dict[str, Any] | bytes) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64url(raw)


_KEY_KID = object()


def mint(
    key: SigningKey,
    payload: dict[str, Any] | bytes,
    *,
    alg: str | None = None,
    kid: str | object | None = _KEY_KID,
    headers: dict[str, Any] | None = None,
    sign_alg: str | None = None,
) -> str:
    """A compact JWS signed by ``key``.

    ``alg`` is the header's alg (default the key's); ``kid`` defaults to the key's (``None``
    omits it); ``headers`` adds or overrides header members (``None`` values remove them).
    ``sign_alg`` signs with a different algorithm than the header claims (e.g. header ``ES256``,
    signature RS256) for confusion tests.
    """
    header: dict[str, Any] = {"alg": alg or key.alg, "typ": "JWT"}
    use_kid = key.kid if kid is _KEY_KID else kid
    if use_kid is not None:
        header["kid"] = use_kid
    for name, value in (headers or {}).items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    signing_input = f"{_json_b64(header)}.{_json_b64(payload)}"
    signature = key.sign(signing_input.encode("ascii"), sign_alg or header["alg"])
    return f"{signing_input}.{b64url(signature)}"


def assemble(header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes) -> str:
    """A compact JWS from parts, no signing (for malformed / forged tokens)."""
    return f"{_json_b64(header)}.{_json_b64(payload)}.{b64url(signature)}"


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An unsecured JWS (``alg: none`` style): empty signature segment."""
    return f"{_json_b64(header)}.{_json_b64(payload)}."


def hmac_token(
    secret: bytes, payload: dict[str, Any], *, alg: str = "HS256", kid: str | None = None
) -> str:
    """An HMAC-signed token (PyJWT refuses PEM secrets, so this signs by hand)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_json_b64(header)}.{_json_b64(payload)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def decode_part(token: str, index: int) -> dict[str, Any]:
    """The JSON of segment ``index`` (0 header, 1 payload) of ``token``, unverified."""
    segment = token.split(".")[index]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


def tamper(token: str, **changes: Any) -> str:
    """``token`` with its payload changed (``None`` removes a claim) and the signature kept."""
    header_seg, _, signature_seg = token.split(".")
    payload = decode_part(token, 1)
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return f"{header_seg}.{_json_b64(payload)}.{signature_seg}"


def bearer(token: str) -> dict[str, str]:
    """Request headers carrying ``token`` as a bearer credential."""
    return {"authorization": f"Bearer {token}"}
