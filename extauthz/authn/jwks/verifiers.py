"""Signature verifiers per JWS algorithm family, and strict base64url (RFC 7515, 7518, 8037).

Algorithm families are fixed (RFC 7518 §3, RFC 8037)::

    RS256/384/512, PS256/384/512  kty RSA (>= 2048 bits)
    ES256 / ES384 / ES512         kty EC, crv P-256 / P-384 / P-521 respectively
    EdDSA                         kty OKP, crv Ed25519 or Ed448

so an RSA key never verifies an ES256 token and an EC key on P-384 never verifies ES256. ``none``
and HMAC do not exist here at all.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["ALGORITHMS", "PublicKey", "Verifier", "b64url_decode"]

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
#: verify(signing_input, signature) -> True iff the signature is valid
Verifier = Callable[[bytes, bytes], bool]

#: RSA algorithms: alg -> (hash, PSS?)
RSA_ALGS: Mapping[str, tuple[hashes.HashAlgorithm, bool]] = {
    "RS256": (hashes.SHA256(), False),
    "RS384": (hashes.SHA384(), False),
    "RS512": (hashes.SHA512(), False),
    "PS256": (hashes.SHA256(), True),
    "PS384": (hashes.SHA384(), True),
    "PS512": (hashes.SHA512(), True),
}
#: EC curves: crv -> (curve, coordinate size in bytes, the one alg defined on it, its hash)
EC_CURVES: Mapping[str, tuple[ec.EllipticCurve, int, str, hashes.HashAlgorithm]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256", hashes.SHA256()),
    "P-384": (ec.SECP384R1(), 48, "ES384", hashes.SHA384()),
    "P-521": (ec.SECP521R1(), 66, "ES512", hashes.SHA512()),
}
#: OKP curves (EdDSA, RFC 8037): crv -> public key size in bytes
OKP_SIZES: Mapping[str, int] = {"Ed25519": 32, "Ed448": 57}

#: Every algorithm extauthz can verify. Anything else (``none``, ``HS*``, unknown) is refused.
ALGORITHMS: frozenset[str] = frozenset([*RSA_ALGS, *(c[2] for c in EC_CURVES.values()), "EdDSA"])
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



def rsa_verifier(key: rsa.RSAPublicKey, hash_alg: hashes.HashAlgorithm, *, pss: bool) -> Verifier:
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


def ecdsa_verifier(
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


def eddsa_verifier(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verifier:
    def verify(signing_input: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True

    return verify


