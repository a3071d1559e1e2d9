"""Leaf-certificate rules the chain verifier does not apply: key strength, names, X509-SVID.

``cryptography.x509.verification`` checks signatures, validity, basic constraints, key usage of
the CAs, name constraints and the EKU. It does not refuse a weak *leaf* key (the webpki profile
requires one, RFC 5280 constrains the names), nor does it know X509-SVID. These checks do, each
raising :class:`CertPolicyError` with a public-safe message:

Key (the webpki / CA/Browser Forum client profile, as rustls-webpki and Chromium apply it):
  * RSA: modulus of at least 2048 bits and a multiple of 8 (BR §6.1.5);
  * EC: P-256, P-384 or P-521 only (P-192, P-224 and brainpool curves are refused);
  * Ed25519 is accepted (TLS 1.3 client certificates may use it; Envoy/BoringSSL verifies it);
  * DSA, Ed448, X25519/X448 and anything else are refused.

Names (RFC 5280 §4.1.2.6 / §4.2.1.6): a leaf with an empty subject must carry a
subjectAltName, and that extension MUST then be critical.

X509-SVID (SPIFFE X509-SVID spec §3.1, §4.3, §5.2), for a leaf with a SPIFFE ID:
  * the SPIFFE ID has a path (a leaf never names a bare trust domain);
  * keyUsage is present with digitalSignature, and without keyCertSign or cRLSign
    (the leaf is not a CA: basicConstraints cA=false is checked by the caller for every leaf).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: EC curves a leaf key may use.
ALLOWED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MIN_RSA_BITS = 2048


class CertPolicyError(ValueError):
    """The leaf breaks one of the rules in the module docstring (message is public-safe)."""


def check_leaf_key_and_names(leaf: x509.Certificate) -> None:
    """Key strength and the empty-subject rule (module docstring)."""
    try:
        key = leaf.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # unknown or malformed key
        raise CertPolicyError("client certificate key type not supported") from exc
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.public_numbers().n.bit_length()
        if bits < MIN_RSA_BITS:
            raise CertPolicyError(f"client certificate RSA key shorter than {MIN_RSA_BITS} bits")
        if bits % 8:
            raise CertPolicyError("client certificate RSA modulus is not a multiple of 8 bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise CertPolicyError("client certificate EC curve not allowed")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertPolicyError("client certificate key type not allowed")
    if len(leaf.subject) == 0:
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            raise CertPolicyError(
                "client certificate has an empty subject and no subjectAltName") from None
        if not san.critical:
            raise CertPolicyError(
                "client certificate has an empty subject and a non-critical subjectAltName")


def check_svid_leaf(leaf: x509.Certificate, spiffe_path: str) -> None:
    """X509-SVID leaf rules (module docstring); ``spiffe_path`` is the ID's path ('' for none)."""
    if not spiffe_path:
        raise CertPolicyError("a leaf SPIFFE ID must have a path")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise CertPolicyError("an X509-SVID leaf must have keyUsage digitalSignature") from None
    if not usage.digital_signature:
        raise CertPolicyError("an X509-SVID leaf must have keyUsage digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise CertPolicyError("an X509-SVID leaf must not have keyCertSign or cRLSign")
