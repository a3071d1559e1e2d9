"""RFC 8705 certificate-bound access tokens: the token's ``cnf`` names the client certificate.

A verified JWT (or an introspection response, RFC 8705 §3.2) whose ``cnf`` (RFC 7800) member
holds ``x5t#S256`` is only accepted from a request that presents *that* certificate: the
base64url SHA-256 of the certificate's DER must equal it (constant-time compare). The binding is
enforced whenever a token carries it — on ``any_of`` and ``all_of`` routes alike, because it is
checked by the token's own authenticator — and can be *required*
(``certificate_binding.require: true``: a token without ``cnf.x5t#S256`` is refused).

The presented certificate is, as for the ``mtls`` method:

* the TLS peer certificate Envoy reports (gRPC ``include_peer_certificate``; the HTTP transport's
  ``--http-authz-peer-cert-header``), when the configured XFCC model has one hop (or no XFCC);
* otherwise the client's element of ``x-forwarded-client-cert`` read under the trust model
  (``certificate_binding.xfcc``, :mod:`extauthz.authn.xfcc_trust`) — the only way behind two hops.

The certificate's chain is not verified here: RFC 8705 §3 binds the token to the key the TLS
layer proved possession of (Envoy), which allows self-signed client certificates (§2.2). Pair
the token with an ``mtls`` authenticator (``authn_mode: all_of``) to also require a trusted chain.

Refusals (401, the token's challenge with ``error="invalid_token"``):

* ``cert_binding_mismatch`` — another certificate, or none, was presented;
* ``unbound_token`` — binding required and the token has no ``cnf.x5t#S256``;
* ``invalid_token`` — ``cnf`` is not an object, ``x5t#S256`` is not a base64url SHA-256, or
  ``cnf`` holds only confirmation methods extauthz cannot check (``jkt`` for DPoP, ``jwk``...):
  accepting such a token as a plain bearer token would defeat its binding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from extauthz.authn.xfcc_trust import XfccMismatch, XfccModel
from extauthz.config.schema import CertBindingSpec
from extauthz.errors import AuthenticationError, Reason
from extauthz.types import RequestView

XFCC_HEADER = "x-forwarded-client-cert"
THUMBPRINT = "x5t#S256"
#: base64url without padding of a 32-byte digest
_S256 = re.compile(r"[A-Za-z0-9_-]{43}")  # fullmatch: "$" would accept a trailing "\n"
_PEM_MARK = "-----BEGIN CERTIFICATE-----"
_MAX_PEER = 64 * 1024

Fail = Callable[[Reason, str, str], AuthenticationError]


class CertBinding:
    """One authenticator's binding rule (module docstring)."""

    def __init__(self, spec: CertBindingSpec, fail: Fail) -> None:
        model = spec.xfcc_model()
        self._xfcc = XfccModel(*model.model()) if model is not None else None
        self._require = spec.require
        self._fail = fail

    def check(self, claims: Mapping[str, Any], view: RequestView) -> None:
        """Raise AuthenticationError unless the token's binding (if any) holds for ``view``."""
        expected = self._expected(claims)
        if expected is None:
            return
        presented = self._presented(view)
        if presented is None:
            raise self._fail(Reason.CERT_BINDING_MISMATCH,
                             "token is bound to a client certificate; none was presented",
                             "cnf x5t#S256 without a client certificate")
        if not hmac.compare_digest(presented.encode("ascii"), expected.encode("ascii")):
            raise self._fail(Reason.CERT_BINDING_MISMATCH,
                             "token is bound to another client certificate",
                             "cnf x5t#S256 does not match the presented certificate")

    def _expected(self, claims: Mapping[str, Any]) -> str | None:
        if "cnf" not in claims:
            if self._require:
                raise self._fail(Reason.UNBOUND_TOKEN,
                                 "a certificate-bound token (cnf x5t#S256) is required", "")
            return None
        cnf = claims["cnf"]
        if not isinstance(cnf, Mapping) or not cnf:
            raise self._fail(Reason.INVALID_TOKEN, "malformed cnf claim", "cnf is not an object")
        if THUMBPRINT not in cnf:
            raise self._fail(Reason.INVALID_TOKEN, "unsupported token confirmation method",
                             f"cnf members {sorted(str(k) for k in cnf)[:5]} without x5t#S256")
        value = cnf[THUMBPRINT]
        if not isinstance(value, str) or not _S256.fullmatch(value):
            raise self._fail(Reason.INVALID_TOKEN, "malformed cnf claim",
                             "x5t#S256 is not a base64url SHA-256")
        return value

    def _presented(self, view: RequestView) -> str | None:
        """x5t#S256 of the certificate the request presents (None: no certificate)."""
        if self._xfcc is None or self._xfcc.peer_is_client:
            if view.peer_certificate:
                return _thumbprint(_peer_leaf_der(view.peer_certificate, self._fail))
            if self._xfcc is None:
                return None
        header = view.headers.value(XFCC_HEADER)
        if header is None:
            return None
        peer = (x509.load_der_x509_certificate(_peer_leaf_der(view.peer_certificate, self._fail))
                if view.peer_certificate else None)
        try:
            client = self._xfcc.client(header, peer)
        except XfccMismatch as exc:
            raise self._fail(Reason.XFCC_MISMATCH,
                             "x-forwarded-client-cert does not fit the trust model",
                             str(exc)) from None
        assert client.cert is not None  # the model requires Cert for the client
        return _thumbprint(client.cert.public_bytes(serialization.Encoding.DER))


def _thumbprint(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _peer_leaf_der(encoded: str, fail: Fail) -> bytes:
    if len(encoded) > _MAX_PEER:
        raise fail(Reason.CERT_INVALID, "client certificate too large", "")
    text = encoded if _PEM_MARK in encoded else unquote(encoded)
    try:
        leaf = x509.load_pem_x509_certificates(text.encode("utf-8", "replace"))[0]
        return leaf.public_bytes(serialization.Encoding.DER)
    except (ValueError, IndexError, UnsupportedAlgorithm):
        raise fail(Reason.CERT_INVALID, "malformed client certificate",
                   "peer certificate") from None
