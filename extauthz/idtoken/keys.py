"""Signing keys of the identity token: load (PEM from a file or an environment variable),
generate, and publish as JWKs.

Only two key types are accepted, each with exactly one algorithm: EC P-256 signs ES256 and
Ed25519 signs EdDSA. The ``kid`` defaults to the RFC 7638 JWK thumbprint, so it is the same on
every replica and after every restart without being configured.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

Algorithm = Literal["ES256", "EdDSA"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key, its algorithm, its key id and its public JWK (``kid``, ``alg``, ``use``)."""

    kid: str
    alg: Algorithm
    private: PrivateKey
    jwk: dict[str, Any]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def algorithm_of(key: object) -> Algorithm:
    """The one algorithm ``key`` may sign with; ValueError for any other key type."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        raise ValueError(f"EC curve {key.curve.name} is not supported (use P-256 or Ed25519)")
    raise ValueError("not an EC P-256 or Ed25519 private key")


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public half of ``key`` as a JWK (members required by RFC 7517/8037 only)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return dict(json.loads(OKPAlgorithm.to_jwk(key.public_key())))
    return dict(json.loads(ECAlgorithm.to_jwk(key.public_key())))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public EC or OKP key."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def parse_private_key(pem: bytes, kid: str | None = None) -> SigningKey:
    """A :class:`SigningKey` from PEM bytes; ValueError (without key material) if unusable."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # the exception text never includes the key, but keep the message ours anyway
        raise ValueError("not an unencrypted PEM private key") from exc
    alg = algorithm_of(key)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("not an EC P-256 or Ed25519 private key")  # (algorithm_of checked)
    jwk = public_jwk(key)
    kid = kid or thumbprint(jwk)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid=kid, alg=alg, private=key, jwk=jwk)


def load_key(file: str | None, env: str | None, base_dir: Path,
             kid: str | None = None) -> tuple[SigningKey, Path | None]:
    """Load one key from ``file`` (relative to ``base_dir``) or environment variable ``env``.

    Returns the key and the file it came from (watched for hot reload), or raises ValueError.
    """
    if file is not None:
        path = Path(file)
        if not path.is_absolute():
            path = base_dir / path
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return parse_private_key(pem, kid), path
    value = os.environ.get(env) if env is not None else None
    if not value:
        raise ValueError(f"environment variable {env} is not set (or empty)")
    return parse_private_key(value.encode(), kid), None


def generate_pem(alg: Algorithm) -> bytes:
    """A new private key for ``alg`` as unencrypted PKCS#8 PEM."""
    key: PrivateKey = (ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA"
                       else ec.generate_private_key(ec.SECP256R1()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def jwks_document(keys: list[SigningKey] | tuple[SigningKey, ...]) -> dict[str, Any]:
    """The public JWKS of ``keys`` (never a private member)."""
    return {"keys": [dict(k.jwk) for k in keys]}
