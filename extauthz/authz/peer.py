"""The mesh peer as Envoy reported it, for rules and CEL: ``source.principal``, ``uri_sans``.

Trusted inputs only: ``view.source_principal`` is gRPC ``attributes.source.principal``, which
Envoy fills from the downstream TLS peer certificate it verified (the first URI SAN — the SPIFFE
ID under Istio — else the subject); the HTTP transport has no such attribute and leaves it empty.
``uri_sans`` reads the peer certificate Envoy forwarded (gRPC ``include_peer_certificate``, or the
HTTP transport's ``--http-authz-peer-cert-header`` that Envoy sets itself); without one it is
empty. Nothing here reads a client-sent header.
"""

from __future__ import annotations

import functools
from urllib.parse import unquote

from cryptography import x509

from extauthz.types import RequestView

#: a forwarded certificate longer than this is not parsed (the mTLS authenticator refuses it)
_MAX_PEER = 64 * 1024
_PEM_MARK = "-----BEGIN CERTIFICATE-----"  # URL-encoded, the space is %20


@functools.lru_cache(maxsize=256)
def _uri_sans(encoded: str) -> tuple[str, ...]:
    text = encoded if _PEM_MARK in encoded else unquote(encoded)
    try:
        leaf = x509.load_pem_x509_certificates(text.encode("utf-8", "replace"))[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, IndexError, x509.ExtensionNotFound):
        return ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


def peer_uri_sans(view: RequestView) -> list[str]:
    """The URI SANs of the peer certificate Envoy forwarded (empty without one or if malformed)."""
    peer = view.peer_certificate
    if not peer or len(peer) > _MAX_PEER:
        return []
    return list(_uri_sans(peer))


def source_variable(view: RequestView, with_sans: bool) -> dict[str, object]:
    """The CEL ``source`` map: ``principal``, ``address`` and (when used) ``uri_sans``."""
    data: dict[str, object] = {"principal": view.source_principal,
                               "address": view.source_address}
    if with_sans:
        data["uri_sans"] = peer_uri_sans(view)
    return data
