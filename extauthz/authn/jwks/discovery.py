"""OpenID Connect Discovery 1.0 for JWKS: where an issuer's keys are, checked before use."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from extauthz.outbound import OutboundError, OutboundPolicy
from extauthz.tracing import safe_url

__all__ = ["FetchError", "discovery_url", "http_url", "jwks_uri_of"]


class FetchError(OutboundError):
    """A fetch failed; ``result`` is its jwks_fetches label (error, timeout, invalid, refused)."""


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 §4: a trailing ``/`` of the issuer is removed first."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def http_url(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def jwks_uri_of(meta: Any, issuer: str, policy: OutboundPolicy) -> str:
    """The ``jwks_uri`` of a discovery document of ``issuer`` (:class:`FetchError` when the
    document is not about that issuer, names no valid URL, downgrades https, or the outbound
    policy refuses the URL)."""
    if not isinstance(meta, dict):
        raise FetchError("invalid", "discovery document is not a JSON object")
    if meta.get("issuer") != issuer:
        raise FetchError("invalid", "discovery document names a different issuer (refused)")
    jwks_uri = meta.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not http_url(jwks_uri):
        raise FetchError("invalid", "discovery document has no valid jwks_uri")
    if issuer.startswith("https:") and not jwks_uri.startswith("https:"):
        raise FetchError("refused", "jwks_uri downgrades an https issuer to http")
    problem = policy.url_problem(jwks_uri)
    if problem is not None:
        raise FetchError("refused", f"jwks_uri {safe_url(jwks_uri)}: {problem}")
    return jwks_uri
