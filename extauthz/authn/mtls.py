"""Client-certificate (mTLS) authentication, re-verified against our own trust bundles.

Where the certificate comes from (docs/client-certificates.md)
--------------------------------------------------------------
* ``view.peer_certificate``: Envoy's ``attributes.source.certificate`` (URL-encoded PEM; requires
  ``include_peer_certificate: true``), or on the HTTP transport the header Envoy sets to
  ``%DOWNSTREAM_PEER_CERT%`` (``--http-authz-peer-cert-header``). Several PEM blocks: the first is
  the leaf, the rest intermediates — but Envoy 1.40 sends only the leaf.
* ``x-forwarded-client-cert`` (XFCC), only under the trust model of ``spec.xfcc``
  (:mod:`extauthz.authn.xfcc_trust`): the header is read the way Envoy writes it, the element
  count must be exactly the model's, and the client is the first element. With one proxy, a peer
  certificate and XFCC must name the same certificate (the element supplies the intermediates);
  behind several proxies the peer certificate is a proxy's and never the identity. A client
  certificate whose names hold XFCC delimiters is refused when read from XFCC.

Verification (``cryptography.x509.verification``, the webpki profiles): a chain of at most
``max_intermediates`` intermediates to the configured trust bundles — for an SVID of a trust
domain listed in ``spiffe_bundles``, to that domain's bundle only —, validity at ``ctx.clock``
time for every certificate, the clientAuth extended key usage (required to be present unless
``require_client_auth_eku: false``), a leaf that is not a CA, and the leaf rules of
:mod:`extauthz.authn.certpolicy` (key strength, empty subject, X509-SVID). The leaf's
validity, CA flag and EKU are checked first so the deny reason is precise (``cert_expired``,
``cert_not_yet_valid``, ``cert_invalid``); a chain that does not verify is ``untrusted_cert``.
Successful verifications are cached by the SHA-256 of the leaf's
DER (bounded LRU), never past the earliest ``notAfter`` of the verified chain.

Identity: ``subject`` is the SPIFFE ID when the leaf has a ``spiffe://`` URI SAN — which must then
be its only URI SAN and a syntactically valid SPIFFE ID (X509-SVID rules) — else the first DNS
SAN, else the subject DN (RFC 4514). Identity headers (under the identity prefix):
``<prefix>spiffe-id`` and ``<prefix>cert-sha256`` (hex, like XFCC ``Hash``).

Principal rules (:meth:`MtlsAuthenticator.principal_allowed`): with no rule configured every
verified certificate is allowed. Otherwise it must satisfy at least one configured rule:

* ``allowed_spiffe_ids``: the SPIFFE ID equals one of them;
* ``trust_domains`` / ``spiffe_path_globs`` (one combined rule): the SPIFFE ID's trust domain is
  listed (or the list is empty) **and** its path matches one glob (or there are none). Globs use
  :func:`fnmatch.fnmatchcase` on the path: case-sensitive, ``*`` matches any run of characters
  *including* ``/`` (``/ns/orders/*`` matches ``/ns/orders/sa/api``), ``?`` one character,
  ``[...]`` a set;
* ``dns_names``: a DNS SAN equals one of them (case-insensitive, exact).

A verified certificate that fails the rules is a 403 ``forbidden``
(:class:`~extauthz.errors.AuthorizationError`): the client is known, just not allowed.

Challenge: TLS has no HTTP challenge; RFC 9110 still wants a ``WWW-Authenticate`` on a 401, so
this method answers ``ClientCert realm="..."`` — not a registered scheme (browsers ignore it);
it tells a human or a client library that a client certificate is expected, which cannot be
supplied by retrying the request, only on a new TLS connection.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from extauthz.authn.base import Authenticator, AuthenticatorBase, Challenge, CredentialSurface
from extauthz.authn.cache import CredentialCache, credential_key
from extauthz.authn.certpolicy import CertPolicyError, check_leaf_key_and_names, check_svid_leaf
from extauthz.authn.context import BuildContext
from extauthz.authn.xfcc_trust import XfccMismatch, XfccModel, has_delimiters
from extauthz.config.schema import MtlsSpec
from extauthz.errors import AuthenticationError, AuthorizationError, Reason
from extauthz.types import AuthMethod, Identity, RequestView

XFCC_HEADER = "x-forwarded-client-cert"
#: Largest URL-encoded peer certificate (chain) accepted.
MAX_PEER_CERT_LENGTH = 64 * 1024
#: what cryptography raises for a malformed certificate, at load or when a part is first read
#: (extensions and names are parsed lazily); only ValueError is a ValueError
_X509_ERRORS = (ValueError, x509.InvalidVersion, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType, UnsupportedAlgorithm)
#: Most intermediates accepted from a client (the verifier's chain depth is
#: ``mtls.max_intermediates``, default :data:`DEFAULT_MAX_INTERMEDIATES`).
MAX_INTERMEDIATES = 16
DEFAULT_MAX_INTERMEDIATES = 8
#: SPIFFE IDs are at most 2048 bytes (SPIFFE-ID spec §2.3).
MAX_SPIFFE_ID_LENGTH = 2048

_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)*)")  # fullmatch: no "\n"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")  # fullmatch
_PEM_MARK = "-----BEGIN CERTIFICATE-----"


def cert_thumbprint_s256(cert: str | bytes) -> str:
    """RFC 8705 ``x5t#S256``: base64url (no padding) of the SHA-256 of the certificate's DER.

    ``cert`` is PEM (text or bytes; URL-encoded PEM as Envoy sends it is accepted too) or DER
    bytes. Only the first certificate of a PEM chain counts. Raises ValueError if it is neither.
    """
    der = _first_der(cert)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _first_der(cert: str | bytes) -> bytes:
    if isinstance(cert, str):
        text = cert if _PEM_MARK in cert else unquote(cert)
        if _PEM_MARK not in text:
            raise ValueError("not a PEM certificate")
        cert = text.encode("utf-8")
    if _PEM_MARK.encode() in cert:
        loaded = x509.load_pem_x509_certificates(cert)[0]
    else:
        loaded = x509.load_der_x509_certificate(cert)
    return loaded.public_bytes(serialization.Encoding.DER)


def parse_spiffe_id(value: str) -> tuple[str, str] | None:
    """``(trust_domain, path)`` of a valid SPIFFE ID, else None (SPIFFE-ID spec §2)."""
    if len(value) > MAX_SPIFFE_ID_LENGTH:
        return None
    match = _SPIFFE_ID.fullmatch(value)
    if match is None:
        return None
    trust_domain, path = match.group(1), match.group(2)
    if any(segment in (".", "..") for segment in path.split("/")[1:]):
        return None
    return trust_domain, path


@dataclass(frozen=True, slots=True)
class _Presented:
    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]


class MtlsAuthenticator(AuthenticatorBase):
    """Verifies client certificates presented through Envoy (see the module docstring)."""

    kind = AuthMethod.MTLS

    def __init__(
        self,
        name: str,
        spec: MtlsSpec,
        anchors: list[x509.Certificate],
        ctx: BuildContext,
        sources: tuple[Path, ...] = (),
        domain_anchors: dict[str, list[x509.Certificate]] | None = None,
    ) -> None:
        self.name = name
        self._sources = sources
        model = spec.xfcc_model()
        self._xfcc = XfccModel(*model.model()) if model is not None else None
        self._require_eku = spec.require_client_auth_eku
        self._clock = ctx.clock
        self._prefix = ctx.settings.identity_header_prefix
        #: the store for certificates without a SPIFFE ID (and SPIFFE IDs of unlisted domains
        #: when no spiffe_bundles are configured); None when only spiffe_bundles are given
        self._policy = _policy(anchors, spec.max_intermediates) if anchors else None
        #: SPIFFE federation: trust domain -> the only store its SVIDs may chain to
        self._domain_policies = {
            domain: _policy(certs, spec.max_intermediates)
            for domain, certs in (domain_anchors or {}).items()
        }
        #: leaf fingerprint -> (identity, valid until): a verified chain costs a dict hit
        self._cache: CredentialCache[tuple[Identity, float]] = CredentialCache(
            spec.cache_size, clock=ctx.clock, max_ttl=spec.cache_ttl_seconds)
        #: SHA-256 of exactly what Envoy presented (peer certificate text, XFCC header) -> the
        #: same entry: a repeated presentation skips PEM parsing and DER re-encoding too, which
        #: cost far more than the lookup (docs/performance.md). Same bytes, same answer.
        self._presentations: CredentialCache[tuple[Identity, float]] = CredentialCache(
            spec.cache_size, clock=ctx.clock, max_ttl=spec.cache_ttl_seconds)
        self._cache_ttl = spec.cache_ttl_seconds
        self._allowed_ids = frozenset(spec.allowed_spiffe_ids)
        self._trust_domains = frozenset(spec.trust_domains)
        self._globs = tuple(spec.spiffe_path_globs)
        self._dns_names = frozenset(d.lower() for d in spec.dns_names)
        self._has_rules = bool(
            self._allowed_ids or self._trust_domains or self._globs or self._dns_names
        )
        self._challenge = Challenge("ClientCert", (("realm", ctx.settings.realm),))
        self.surface = CredentialSurface(
            headers=(XFCC_HEADER,) if self._xfcc else (),
            injected_headers=(self._prefix + "spiffe-id", self._prefix + "cert-sha256"),
            source_files=sources,
            # a chain is legitimately larger than any token: bounded by mTLS itself and the
            # header limits, not by max_token_bytes
            token_size_limited=False,
        )

    @classmethod
    def from_spec(cls, name: str, spec: MtlsSpec, ctx: BuildContext) -> MtlsAuthenticator:
        """Build from configuration; raises ValueError naming the bad key or file."""
        for i, value in enumerate(spec.allowed_spiffe_ids):
            if parse_spiffe_id(value) is None:
                raise ValueError(f"allowed_spiffe_ids[{i}]: not a valid SPIFFE ID")
        for i, value in enumerate(spec.trust_domains):
            if not _TRUST_DOMAIN.fullmatch(value):
                raise ValueError(
                    f"trust_domains[{i}]: not a trust domain (lowercase letters, digits, '.-_')"
                )
        for i, value in enumerate(spec.spiffe_path_globs):
            if not value.startswith("/"):
                raise ValueError(f"spiffe_path_globs[{i}]: must start with '/'")
        anchors: list[x509.Certificate] = []
        sources: list[Path] = []
        for i, file in enumerate(spec.trust_bundles):
            path = Path(file) if Path(file).is_absolute() else ctx.base_dir / file
            anchors.extend(load_trust_bundle(path, f"trust_bundles[{i}]"))
            sources.append(path)
        domain_anchors: dict[str, list[x509.Certificate]] = {}
        for i, entry in enumerate(spec.spiffe_bundles):
            if not _TRUST_DOMAIN.fullmatch(entry.trust_domain):
                raise ValueError(
                    f"spiffe_bundles[{i}].trust_domain: not a trust domain "
                    "(lowercase letters, digits, '.-_')"
                )
            path = Path(entry.bundle)
            path = path if path.is_absolute() else ctx.base_dir / path
            domain_anchors[entry.trust_domain] = load_trust_bundle(
                path, f"spiffe_bundles[{i}].bundle")
            sources.append(path)
        return cls(name, spec, anchors, ctx, tuple(sources), domain_anchors)

    # -- the check -----------------------------------------------------------------------------

    async def authenticate(self, view: RequestView) -> Identity | None:
        key = self._presentation_key(view)
        if key is None:
            return None
        now = self._clock()
        entry = self._presentations.get(key, now)
        if entry is None:
            presented = self._presented(view)
            if presented is None:
                return None
            entry = self._verified(presented.leaf, presented.intermediates)
            self._presentations.put(key, entry, entry[1])  # never past the chain's entry
        identity = entry[0]
        if not self.principal_allowed(identity):
            raise AuthorizationError(
                Reason.FORBIDDEN, "client certificate not allowed",
                f"{self.name}: principal {identity.subject!r} not allowed",
            )
        return identity

    def verify(
        self, leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...] = ()
    ) -> Identity:
        """Verify ``leaf`` (with optional untrusted ``intermediates``) and derive its Identity."""
        return self._verified(leaf, intermediates)[0]

    def _verified(
        self, leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...] = ()
    ) -> tuple[Identity, float]:
        """(identity, time until which the verification stands), from the cache if there."""
        der = leaf.public_bytes(serialization.Encoding.DER)
        fingerprint = credential_key(der)
        now = self._clock()
        return self._cache.through_sync(
            fingerprint, now,
            lambda: self._verify_chain(leaf, intermediates, der, fingerprint, now))

    def _verify_chain(
        self, leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...], der: bytes,
        fingerprint: bytes, now: float,
    ) -> tuple[tuple[Identity, float], float]:
        """Verify the chain at ``now``: the entry (identity, valid until) and that end."""
        self._precheck(leaf, now)
        identity = self._identity(leaf, der, fingerprint)
        policy = self._policy_for(identity)  # its chain depth is max_intermediates
        try:
            verified = (
                policy.time(dt.datetime.fromtimestamp(now, dt.UTC))
                .build_client_verifier()
                .verify(leaf, list(intermediates))
            )
        except VerificationError as exc:
            raise self._fail(Reason.UNTRUSTED_CERT, "client certificate not trusted",
                             str(exc)) from None
        except _X509_ERRORS as exc:  # a malformed intermediate, read lazily by the verifier
            raise self._fail(Reason.CERT_INVALID, "malformed client certificate chain",
                             str(exc)) from None
        chain_end = min(c.not_valid_after_utc.timestamp() for c in verified.chain)
        until = min(chain_end, now + self._cache_ttl)
        return (identity, until), until

    def _policy_for(self, identity: Identity) -> PolicyBuilder:
        """The store the leaf must chain to: its own trust domain's bundle when it has one.

        SPIFFE Trust Domain and Bundle spec §3: an SVID is validated against the bundle of the
        trust domain in its own SPIFFE ID, never another domain's. With ``spiffe_bundles``
        configured, an SVID of a domain not listed there is not trusted at all.
        """
        domain = identity.claims.get("trust_domain")
        if isinstance(domain, str) and self._domain_policies:
            policy = self._domain_policies.get(domain)
            if policy is None:
                raise self._fail(Reason.UNTRUSTED_CERT, "client certificate not trusted",
                                 f"no bundle for trust domain {domain!r}")
            return policy
        if self._policy is None:
            raise self._fail(Reason.UNTRUSTED_CERT, "client certificate not trusted",
                             "not an SVID and no trust_bundles configured")
        return self._policy

    def principal_allowed(self, identity: Identity) -> bool:
        """Whether a verified identity passes the principal rules (module docstring)."""
        if not self._has_rules:
            return True
        spiffe_id = identity.claims.get("spiffe_id")
        if isinstance(spiffe_id, str):
            if spiffe_id in self._allowed_ids:
                return True
            if self._trust_domains or self._globs:
                parsed = parse_spiffe_id(spiffe_id)
                if parsed is not None:
                    trust_domain, path = parsed
                    domain_ok = not self._trust_domains or trust_domain in self._trust_domains
                    path_ok = not self._globs or any(
                        fnmatch.fnmatchcase(path, g) for g in self._globs
                    )
                    if domain_ok and path_ok:
                        return True
        if self._dns_names:
            dns = identity.claims.get("dns", ())
            if any(name.lower() in self._dns_names for name in dns):
                return True
        return False

    # -- reading the certificate ---------------------------------------------------------------

    def _presentation_key(self, view: RequestView) -> bytes | None:
        """The cache key of what :meth:`_presented` reads from ``view`` (None: nothing there)."""
        peer = view.peer_certificate
        xfcc = view.headers.value(XFCC_HEADER) if self._xfcc else None
        if not peer and xfcc is None:
            return None
        if len(peer) > MAX_PEER_CERT_LENGTH:  # bounded before it is hashed (XFCC: by the limits)
            raise self._fail(Reason.CERT_INVALID, "client certificate too large")
        if xfcc is not None:  # it can supply the chain (or the certificate): part of the key
            return credential_key(peer, xfcc)
        return credential_key(peer)

    def _presented(self, view: RequestView) -> _Presented | None:
        peer = view.peer_certificate
        if self._xfcc is None:
            return self._from_peer(peer) if peer else None
        header = view.headers.value(XFCC_HEADER)
        if self._xfcc.peer_is_client:
            if not peer:
                return self._from_xfcc(header) if header is not None else None
            presented = self._from_peer(peer)
            if header is None:
                return presented
            # One Envoy wrote both: the header must fit the model and name the same
            # certificate. Envoy's source.certificate holds only the leaf (verified against
            # 1.40); the chain the client sent is in that element: use its intermediates
            # (still verified by us).
            from_xfcc = self._from_xfcc(header)
            if _der(from_xfcc.leaf) != _der(presented.leaf):
                raise self._fail(Reason.XFCC_MISMATCH,
                                 "x-forwarded-client-cert does not fit the trust model",
                                 "the client element is not the peer certificate")
            if presented.intermediates:
                return presented
            return _Presented(presented.leaf, from_xfcc.intermediates)
        # Several hops: the TLS peer of the nearest Envoy is a proxy, never the client.
        if header is None:
            return None
        return self._from_xfcc(header, peer)

    def _from_peer(self, encoded: str) -> _Presented:
        # (its size was bounded by _presentation_key, which every authentication runs first)
        certs = self._load_pem(_url_decoded(encoded), "peer certificate")
        if not certs:
            raise self._fail(Reason.CERT_INVALID, "malformed client certificate")
        return _Presented(certs[0], self._intermediates(certs[0], certs[1:]))

    def _from_xfcc(self, header: str, peer: str = "") -> _Presented:
        """The client's element under the trust model (xfcc_trust module docstring)."""
        assert self._xfcc is not None
        peer_leaf = self._from_peer(peer).leaf if peer else None
        try:
            client = self._xfcc.client(header, peer_leaf)
        except XfccMismatch as exc:
            raise self._fail(Reason.XFCC_MISMATCH,
                             "x-forwarded-client-cert does not fit the trust model",
                             str(exc)) from None
        assert client.cert is not None
        if has_delimiters(client.uris + client.dns):
            # Read correctly (the names are anchored to the certificate), but a name that holds
            # XFCC syntax is refused outright: no downstream XFCC reader should ever see it.
            raise self._fail(Reason.CERT_INVALID,
                             "client certificate names contain x-forwarded-client-cert delimiters")
        return _Presented(client.cert, self._intermediates(client.cert, list(client.chain)))

    def _load_pem(self, pem: str, what: str) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(pem.encode("utf-8", "replace"))
        except _X509_ERRORS as exc:
            raise self._fail(Reason.CERT_INVALID, "malformed client certificate",
                             f"{what}: {exc}") from None

    def _intermediates(
        self, leaf: x509.Certificate, certs: list[x509.Certificate]
    ) -> tuple[x509.Certificate, ...]:
        out = tuple(c for c in certs if c != leaf)
        if len(out) > MAX_INTERMEDIATES:
            raise self._fail(Reason.CERT_INVALID, "client certificate chain too long")
        return out

    # -- checks and identity -------------------------------------------------------------------

    def _precheck(self, leaf: x509.Certificate, now: float) -> None:
        """Leaf checks with precise reasons (the verifier repeats them, with vaguer errors)."""
        if now < leaf.not_valid_before_utc.timestamp():
            raise self._fail(Reason.CERT_NOT_YET_VALID, "client certificate not yet valid")
        if now > leaf.not_valid_after_utc.timestamp():
            raise self._fail(Reason.CERT_EXPIRED, "client certificate expired")
        try:
            extensions = leaf.extensions
            constraints = _extension(extensions, x509.BasicConstraints)
            eku = _extension(extensions, x509.ExtendedKeyUsage)
        except _X509_ERRORS as exc:
            raise self._fail(Reason.CERT_INVALID, "malformed client certificate",
                             f"extensions: {exc}") from None
        if constraints is not None and constraints.ca:
            raise self._fail(Reason.CERT_INVALID, "a CA certificate is not a client certificate")
        if eku is None:
            if self._require_eku:
                raise self._fail(Reason.CERT_INVALID,
                                 "client certificate lacks the clientAuth key usage",
                                 "no extendedKeyUsage extension")
        elif ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise self._fail(Reason.CERT_INVALID,
                             "client certificate lacks the clientAuth key usage")
        try:
            check_leaf_key_and_names(leaf)
        except CertPolicyError as exc:
            raise self._fail(Reason.CERT_INVALID, str(exc)) from None
        except _X509_ERRORS as exc:
            raise self._fail(Reason.CERT_INVALID, "malformed client certificate",
                             f"key or names: {exc}") from None

    def _identity(self, leaf: x509.Certificate, der: bytes, fingerprint: bytes) -> Identity:
        try:
            san = _extension(leaf.extensions, x509.SubjectAlternativeName)
            uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san else []
            dns = san.get_values_for_type(x509.DNSName) if san else []
            subject_dn = leaf.subject.rfc4514_string()
            issuer_dn = leaf.issuer.rfc4514_string()
        except _X509_ERRORS as exc:
            raise self._fail(Reason.CERT_INVALID, "malformed client certificate",
                             f"names: {exc}") from None
        spiffe_id: str | None = None
        trust_domain: str | None = None
        if any(u.lower().startswith("spiffe:") for u in uris):
            if len(uris) != 1:
                raise self._fail(Reason.CERT_INVALID,
                                 "a SPIFFE certificate must have exactly one URI SAN")
            parsed = parse_spiffe_id(uris[0])
            if parsed is None:
                raise self._fail(Reason.CERT_INVALID, "invalid SPIFFE ID in client certificate")
            try:
                check_svid_leaf(leaf, parsed[1])
            except CertPolicyError as exc:
                raise self._fail(Reason.CERT_INVALID, str(exc)) from None
            except _X509_ERRORS as exc:
                raise self._fail(Reason.CERT_INVALID, "malformed client certificate",
                                 f"keyUsage: {exc}") from None
            spiffe_id, trust_domain = uris[0], parsed[0]
        subject = spiffe_id or (dns[0] if dns else subject_dn)
        if not subject:
            raise self._fail(Reason.CERT_INVALID, "client certificate names no subject")
        sha256_hex = fingerprint.hex()
        claims: dict[str, Any] = {
            "subject_dn": subject_dn,
            "issuer_dn": issuer_dn,
            "serial": format(leaf.serial_number, "x"),
            "uris": tuple(uris),
            "dns": tuple(dns),
            "cert_sha256": sha256_hex,
            "x5t#S256": base64.urlsafe_b64encode(fingerprint).rstrip(b"=").decode("ascii"),
        }
        headers = [(self._prefix + "cert-sha256", sha256_hex)]
        if spiffe_id is not None:
            claims["spiffe_id"] = spiffe_id
            claims["trust_domain"] = trust_domain
            headers.insert(0, (self._prefix + "spiffe-id", spiffe_id))
        return Identity(
            method=self.kind,
            subject=subject,
            authenticator=self.name,
            claims=MappingProxyType(claims),
            expires_at=leaf.not_valid_after_utc.timestamp(),
            headers=tuple(headers),
        )

    def _fail(self, reason: Reason, description: str, detail: str = "") -> AuthenticationError:
        return AuthenticationError(reason, description, detail, authenticator=self.name)

    # -- challenge ---------------------------------------------------------------------------

    def challenge(self, error: AuthenticationError | None = None) -> str:
        if error is None:
            return self._challenge.render()
        return self._challenge.render(
            ("error", "invalid_certificate"), ("error_description", error.description)
        )


_: type[Authenticator] = MtlsAuthenticator  # static conformance check (mypy)


def _extension(extensions: x509.Extensions, kind: type[Any]) -> Any:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _url_decoded(encoded: str) -> str:
    # Percent-decoding only: "+" is a base64 character, never a space here.
    return encoded if _PEM_MARK in encoded else unquote(encoded)


def _policy(anchors: list[x509.Certificate], max_intermediates: int) -> PolicyBuilder:
    """A verifier policy for one store: webpki profiles, ``max_intermediates`` deep."""
    # The webpki end-entity profile requires a subjectAltName; we accept a leaf without one
    # (its subject DN then names it) and check everything else as the profile does.
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(Store(anchors))
        .max_chain_depth(max_intermediates)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
    )


def load_trust_bundle(path: Path, where: str) -> list[x509.Certificate]:
    """The CA certificates of a PEM trust bundle; ValueError naming ``where``, the file and the
    certificate for anything unusable (never another exception: the caller turns ValueError
    into a located configuration error).

    Every part the verifier will read later is read now (extensions, names, the key), so a CA
    with, e.g., malformed name constraints is refused at load time instead of failing a check.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"{where}: {path}: cannot read ({exc.strerror or exc.__class__.__name__})"
        ) from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except _X509_ERRORS:
        raise ValueError(f"{where}: {path}: no PEM certificates found") from None
    for n, cert in enumerate(certs, start=1):
        try:
            constraints = _extension(cert.extensions, x509.BasicConstraints)
            for ext in cert.extensions:
                _ = ext.value
            name = cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            cert.public_key()
        except (*_X509_ERRORS, TypeError):
            raise ValueError(f"{where}: {path}: certificate {n} is malformed") from None
        if constraints is None or not constraints.ca:
            raise ValueError(
                f"{where}: {path}: certificate {n} ({name}) is not a CA certificate"
            )
        try:
            _policy([cert], DEFAULT_MAX_INTERMEDIATES)
        except (*_X509_ERRORS, TypeError):
            raise ValueError(
                f"{where}: {path}: certificate {n} cannot be a trust anchor") from None
    return certs
