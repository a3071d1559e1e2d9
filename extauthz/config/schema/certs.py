"""Client certificates: ``mtls`` (trust anchors, SPIFFE bundles, principal rules), the XFCC
trust model, and RFC 8705 certificate binding of tokens (``certificate_binding``).

Compiled by extauthz/authn/mtls.py, xfcc_trust.py and certbinding.py; docs/client-certificates.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from extauthz.config.schema.base import Model, PositiveSeconds

#: The ``forward_client_cert_details`` modes a trusted hop may have (extauthz/authn/xfcc_trust.py).
XfccMode = Literal["SANITIZE_SET", "APPEND_FORWARD", "FORWARD_ONLY"]


def model_problem(proxies: Sequence[str], has_proxy_identities: bool = True) -> str | None:
    """Why ``proxies`` is not a usable trust model (None when it is)."""
    if not proxies:
        return "at least one proxy (the one that terminated the client's TLS)"
    if len(proxies) > 8:
        return "at most 8 proxies"
    if proxies[0] != "SANITIZE_SET":
        return ("the first (outermost) proxy must use SANITIZE_SET: with any other mode the "
                "client's own x-forwarded-client-cert reaches extauthz")
    for i, mode in enumerate(proxies[1:], start=1):
        if mode not in ("APPEND_FORWARD", "FORWARD_ONLY"):
            return (f"proxies[{i}]: an inner proxy must use APPEND_FORWARD or FORWARD_ONLY "
                    f"({mode} would replace or drop the client's element)")
    if len(proxies) > 1 and not has_proxy_identities:
        return ("proxy_identities: required with more than one proxy (who may connect to an "
                "inner proxy decides who the client is)")
    return None


#: (proxies, proxy_identities) as XfccModel takes them
XfccModelArgs = tuple[tuple[XfccMode, ...], frozenset[str]]


def _edge_only() -> list[XfccMode]:
    return ["SANITIZE_SET"]


class XfccSpec(Model):
    """The XFCC trust model: the Envoys between the client and extauthz.

    ``proxies`` lists each one's ``forward_client_cert_details``, outermost first: the first must be
    ``SANITIZE_SET``; each later ``APPEND_FORWARD`` adds one element (its peer, the previous proxy);
    ``FORWARD_ONLY`` adds none. The header must have exactly ``1 + APPEND_FORWARD hops`` elements
    and the client is the first.
    """

    proxies: list[XfccMode] = Field(default_factory=_edge_only, min_length=1, max_length=8)
    #: URI or DNS SANs naming the trusted proxies' own certificates (required with more than one
    #: proxy): each proxy element, and the peer certificate behind two hops, must carry one
    proxy_identities: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list)

    @model_validator(mode="after")
    def _check_proxies(self) -> XfccSpec:
        problem = model_problem(self.proxies, bool(self.proxy_identities))
        if problem is not None:
            raise ValueError(problem)
        return self

    def model(self) -> XfccModelArgs:
        """The arguments of :class:`extauthz.authn.xfcc_trust.XfccModel`."""
        return tuple(self.proxies), frozenset(self.proxy_identities)


class SpiffeBundleSpec(Model):
    """One trust domain's X.509 bundle: SVIDs of ``trust_domain`` must chain to ``bundle``."""

    trust_domain: str = Field(min_length=1, max_length=255)
    #: PEM file of the domain's CA certificates, relative to the configuration file
    bundle: str = Field(min_length=1)


class MtlsSpec(Model):
    """Client certificates (Envoy's peer certificate, or XFCC when enabled), re-verified here."""

    #: PEM files of trusted CA certificates, relative to the configuration file (certificates
    #: without a SPIFFE ID, and SPIFFE IDs of domains not in ``spiffe_bundles``, chain to these)
    trust_bundles: list[str] = Field(default_factory=list)
    #: SPIFFE federation: per-trust-domain bundles; an SVID of a listed domain must chain to
    #: its own domain's bundle and nothing else
    spiffe_bundles: list[SpiffeBundleSpec] = Field(default_factory=list)
    #: read ``x-forwarded-client-cert`` under this trust model (``true`` = one SANITIZE_SET Envoy)
    xfcc: StrictBool | XfccSpec = False
    #: most intermediates between the leaf and a trust anchor (the verifier's chain depth)
    max_intermediates: Annotated[int, Field(ge=0, le=16)] = 8
    #: refuse leaf certificates without an extendedKeyUsage that lists clientAuth
    require_client_auth_eku: bool = True
    #: principal rules (all empty = every verified certificate is allowed)
    allowed_spiffe_ids: list[str] = Field(default_factory=list)
    trust_domains: list[str] = Field(default_factory=list)
    spiffe_path_globs: list[str] = Field(default_factory=list)
    dns_names: list[str] = Field(default_factory=list)
    #: verified certificates cached by SHA-256 fingerprint (LRU; 0 disables)
    cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = 10_000
    #: a cached verification is reused at most this long (and never past the chain's notAfter)
    cache_ttl_seconds: PositiveSeconds = 3600

    @model_validator(mode="after")
    def _check_bundles(self) -> MtlsSpec:
        if not self.trust_bundles and not self.spiffe_bundles:
            raise ValueError("give trust_bundles or spiffe_bundles (no trust anchor otherwise)")
        domains = [b.trust_domain for b in self.spiffe_bundles]
        if len(set(domains)) != len(domains):
            raise ValueError("spiffe_bundles: a trust domain is listed twice")
        return self

    def xfcc_model(self) -> XfccSpec | None:
        """The XFCC trust model, or None when XFCC is not read."""
        return _xfcc_model(self.xfcc)


def _xfcc_model(value: bool | XfccSpec) -> XfccSpec | None:
    if value is True:
        return XfccSpec()
    return value or None


class CertBindingSpec(Model):
    """RFC 8705 certificate-bound tokens (extauthz/authn/certbinding.py).

    A token whose ``cnf`` holds ``x5t#S256`` is always checked against the presented client
    certificate; these settings say where that certificate may come from and whether unbound
    tokens are refused.
    """

    #: refuse tokens without ``cnf.x5t#S256``
    require: bool = False
    #: also take the certificate from x-forwarded-client-cert under this trust model
    xfcc: StrictBool | XfccSpec = False

    def xfcc_model(self) -> XfccSpec | None:
        """The XFCC trust model, or None when XFCC is not read."""
        return _xfcc_model(self.xfcc)
