"""The configuration file format, as pydantic models (validation only; nothing here runs).

Pydantic reports every problem at once with its location; :mod:`extauthz.config.loader` renders
those locations as ``routes[2].authn[0].jwt.issuer``. Models forbid unknown keys so a typo is an
error, not a silently ignored setting. Every key is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from extauthz.config.external import AuthzenRule, LookupSpec, PdpSpec
from extauthz.config.idtoken_schema import IdentityTokenSpec, RouteIdentityTokenSpec

_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")

#: Algorithms a JWT issuer may pin. ``none`` and the HMAC family are absent on purpose: extauthz
#: verifies third-party tokens with public keys only, so "HMAC with a public key" cannot happen.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


class Model(BaseModel):
    """Base: unknown keys are errors, values are immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _header_name(value: str) -> str:
    lowered = value.lower()
    if not _HEADER_NAME.match(lowered):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    return lowered


HeaderName = Annotated[str, Field(min_length=1, max_length=128)]
Name = Annotated[str, Field(pattern=_NAME.pattern)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86400 * 7)]


class CredentialSource(Model):
    """Where one credential is read from; exactly one of the fields is set."""

    header: HeaderName | None = None
    authorization: str | None = Field(
        default=None, description="an Authorization scheme, e.g. 'Bearer' or 'ApiKey'"
    )
    query: str | None = None
    cookie: str | None = None

    @field_validator("header")
    @classmethod
    def _check_header(cls, v: str | None) -> str | None:
        return None if v is None else _header_name(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialSource:
        set_fields = [k for k in ("header", "authorization", "query", "cookie") if getattr(self, k)]
        if len(set_fields) != 1:
            raise ValueError("set exactly one of header, authorization, query, cookie")
        return self


class ApiKeySpec(Model):
    """API keys of the configured consumers, read from the first source that has one."""

    sources: list[CredentialSource] = Field(
        default_factory=lambda: [CredentialSource(header="x-api-key")], min_length=1
    )
    #: restrict to these consumers (default: every consumer in the configuration)
    consumers: list[Name] | None = None
    #: more keys, one JSON object per line, read as a stream and watched for hot reload
    #: (relative to the main file; format: extauthz/authn/keyfile.py, docs/memory.md)
    keys_file: str | None = None


class JwksSpec(Model):
    """Where an issuer's keys come from; exactly one of the fields is set."""

    file: str | None = None
    inline: dict[str, Any] | None = None
    url: str | None = None
    discovery: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> JwksSpec:
        count = sum(
            [self.file is not None, self.inline is not None, self.url is not None, self.discovery]
        )
        if count != 1:
            raise ValueError("set exactly one of file, inline, url, discovery: true")
        if self.url is not None and not self.url.startswith(("https://", "http://")):
            raise ValueError("url must be http(s)")
        return self


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


class JwtSpec(Model):
    """Bearer JWTs from one issuer."""

    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    algorithms: list[JwtAlgorithm] = Field(min_length=1)
    jwks: JwksSpec
    source: CredentialSource = Field(
        default_factory=lambda: CredentialSource(authorization="Bearer")
    )
    leeway_seconds: float = Field(default=30, ge=0, le=300)
    require_exp: bool = True
    #: tokens whose ``exp`` is further away than this are refused (0 = no limit)
    max_lifetime_seconds: float = Field(default=0, ge=0)
    subject_claim: str = "sub"
    scope_claims: list[str] = Field(default_factory=lambda: ["scope", "scp"])
    #: claim (dotted path) -> header to inject upstream; arrays are joined with ","
    claims_to_headers: dict[str, HeaderName] = Field(default_factory=dict)
    refresh_interval_seconds: PositiveSeconds = 300
    #: how long the last good keys keep verifying while the issuer cannot be reached
    max_stale_seconds: PositiveSeconds = 3600
    #: bound of one JWKS fetch (discovery + keys), in the background; below the shipped Envoy
    #: ext_authz timeout (1 s) so that even a fetch a check waits for ends before Envoy gives up
    fetch_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 0.5
    #: minimum time between two refetches triggered by an unknown ``kid``
    min_refetch_interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 10
    #: the longest a check waits for an unknown-``kid`` refetch before answering from the keys
    #: it has (the fetch goes on in the background); 0 = never wait
    refetch_wait_seconds: Annotated[float, Field(ge=0, le=5)] = 0.25
    #: accepted ``typ`` header values (case-insensitive, an ``application/`` prefix ignored);
    #: a token without ``typ`` is accepted unless ``require_typ``
    typ: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["JWT", "at+jwt"], min_length=1
    )
    require_typ: bool = False
    #: verified tokens kept until their ``exp`` (~1.1 KiB each): 20 000 keeps the worst case
    #: (long-lived tokens, all distinct) near 25 MiB inside the shipped 256Mi pod's budget
    #: (docs/resources.md); raise it with the pod's memory limit
    cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = 20_000
    #: RFC 8705 certificate-bound tokens (cnf x5t#S256)
    certificate_binding: CertBindingSpec = Field(default_factory=CertBindingSpec)

    @field_validator("claims_to_headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        return {claim: _header_name(h) for claim, h in v.items()}

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str) -> str:
        if v != v.strip():
            raise ValueError("issuer must not have surrounding whitespace")
        return v


# --- mTLS client certificates and Basic (issue 3) ---------------------------------------------


class BasicSpec(Model):
    """HTTP Basic (RFC 7617) against an htpasswd file (bcrypt or {SHA} entries)."""

    #: htpasswd file, relative to the configuration file; read when the configuration is built
    htpasswd_file: str = Field(min_length=1)
    #: successful verifications are cached this long (0 disables the cache)
    cache_ttl_seconds: Annotated[float, Field(ge=0, le=3600)] = 60
    cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    #: failed attempts allowed per username and per source address within the window
    max_failures: Annotated[int, Field(ge=1, le=10_000)] = 10
    window_seconds: PositiveSeconds = 300
    #: usernames + addresses tracked by the brute-force limiter (least recently seen evicted)
    max_tracked_keys: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    #: threads running bcrypt off the event loop
    hash_workers: Annotated[int, Field(ge=1, le=64)] = 2


# --- HMAC request signatures and OAuth2 token introspection (issue 3) -------------------------
# (compiled by extauthz/authn/hmac_sig.py and extauthz/authn/introspection.py)

SecretEncoding = Literal["raw", "base64", "base64url", "hex"]
DigestAlgorithm = Literal["sha-256", "sha-512"]
#: RFC 9421 keyid / draft-cavage keyId: printable ASCII without space, '"', ',' and '\'
_KEY_ID = re.compile(r"^[!#-+\--\[\]-~]{1,256}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SF_KEY = re.compile(r"^[a-z*][a-z0-9_\-.*]{0,63}$")
#: derived components (RFC 9421 §2.2) a route may require; cavage cannot express @scheme
_DERIVED_COMPONENTS = frozenset(
    {"@method", "@authority", "@scheme", "@target-uri", "@request-target", "@path", "@query"}
)


def _all_digest_algorithms() -> list[DigestAlgorithm]:
    return ["sha-256", "sha-512"]


def _refuse_inline_secret(data: Any, *names: str) -> None:
    if isinstance(data, dict):
        for name in names:
            if name in data:
                raise ValueError(
                    f"{name}: inline secrets are refused; use {name}_file or {name}_env"
                )


def _one_secret_source(file: str | None, env: str | None, prefix: str) -> None:
    if (file is None) == (env is None):
        raise ValueError(f"set exactly one of {prefix}_file, {prefix}_env")
    if env is not None and not _ENV_NAME.match(env):
        raise ValueError(f"{prefix}_env: not an environment variable name: {env!r}")
    if file is not None and not file.strip():
        raise ValueError(f"{prefix}_file: must not be empty")


class HmacKeySpec(Model):
    """One shared HMAC key; the secret comes from a file or an environment variable."""

    id: str = Field(pattern=_KEY_ID.pattern)
    secret_file: str | None = None
    secret_env: str | None = None
    secret_encoding: SecretEncoding = "raw"  # noqa: S105 - an encoding name, not a secret
    #: consumer name reported for requests signed with this key (default: the key id)
    consumer: Name | None = None
    scopes: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        _refuse_inline_secret(data, "secret")
        return data

    @model_validator(mode="after")
    def _secret_source(self) -> HmacKeySpec:
        _one_secret_source(self.secret_file, self.secret_env, "secret")
        return self


class HmacSpec(Model):
    """HTTP request signatures with shared keys: RFC 9421 ``hmac-sha256`` or draft-cavage."""

    profile: Literal["rfc9421", "cavage"] = "rfc9421"
    #: cavage only: ``draft`` (draft-cavage-http-signatures-12), ``apisix`` (APISIX >= 3.11) or
    #: ``kong`` (Kong's hmac-auth: ``@request-target: get /path``, header names as listed)
    dialect: Literal["draft", "apisix", "kong"] = "draft"
    keys: list[HmacKeySpec] = Field(min_length=1)
    #: rfc9421 only: the signature label to verify (default: the first whose keyid is ours)
    label: str | None = Field(default=None, pattern=_SF_KEY.pattern)
    #: rfc9421 only: the signature must carry this ``tag`` parameter
    tag: str | None = Field(default=None, min_length=1, max_length=256)
    #: components every signature must cover (RFC 9421 names; lowercase header names)
    required_components: list[str] = Field(
        default_factory=lambda: ["@method", "@authority", "@path", "@query"]
    )
    #: rfc9421: refuse signatures without ``created`` (cavage always needs a signed date)
    require_created: bool = True
    max_skew_seconds: Annotated[float, Field(ge=0, le=3600)] = 300
    #: how long after ``created`` a signature stays usable (plus the skew)
    max_age_seconds: Annotated[float, Field(ge=0, le=86400)] = 0
    #: rfc9421 only: refuse signatures without a ``nonce`` parameter
    require_nonce: bool = False
    #: live nonces kept for this authenticator's keys together (memory bound of the replay cache)
    nonce_cache_size: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    #: live nonces one key may hold (its share; a full share refuses that key only, 503);
    #: default nonce_cache_size divided by the number of keys
    nonce_cache_per_key: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    #: the signature must cover a body digest that matches the body Envoy forwarded
    require_digest: bool = False
    digest_algorithms: list[DigestAlgorithm] = Field(
        default_factory=_all_digest_algorithms, min_length=1
    )
    #: shorter secrets are refused when the configuration is built
    min_secret_bytes: Annotated[int, Field(ge=16, le=1024)] = 32

    @field_validator("required_components")
    @classmethod
    def _components(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for name in v:
            name = name.lower()
            if name.startswith("@"):
                if name not in _DERIVED_COMPONENTS:
                    known = ", ".join(sorted(_DERIVED_COMPONENTS))
                    raise ValueError(f"unsupported derived component {name!r} (known: {known})")
            else:
                name = _header_name(name)
            if name not in out:
                out.append(name)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> HmacSpec:
        ids = [k.id for k in self.keys]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"duplicate key id(s): {', '.join(dupes)}")
        explicit = self.model_fields_set
        if self.profile == "cavage":
            for name in ("label", "tag", "require_nonce", "require_created"):
                if name in explicit:
                    raise ValueError(f"{name} applies to profile rfc9421 only")
            if "@scheme" in self.required_components:
                raise ValueError("@scheme cannot be covered by a cavage signature")
        elif "dialect" in explicit:
            raise ValueError("dialect applies to profile cavage only")
        return self


class IntrospectionSpec(Model):
    """Opaque bearer tokens checked at an OAuth 2.0 introspection endpoint (RFC 7662)."""

    endpoint: str = Field(min_length=1)
    client_id: str = Field(min_length=1, max_length=256)
    client_secret_file: str | None = None
    client_secret_env: str | None = None
    #: how we authenticate to the endpoint: HTTP Basic or client_id/client_secret form fields
    client_auth: Literal["basic", "post"] = "basic"
    #: bound of one introspection call; a check with an uncached token waits for it, so the
    #: default stays well below the shipped Envoy ext_authz timeout (1 s)
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 0.5
    #: active results are cached until min(exp, now + this); 0 disables the positive cache
    cache_max_ttl_seconds: Annotated[float, Field(ge=0, le=86400)] = 300
    #: inactive (and refused) results are cached this long; 0 disables the negative cache
    negative_cache_ttl_seconds: Annotated[float, Field(ge=0, le=3600)] = 10
    #: cached results (claims included): 10 000 fits the shipped 256Mi pod (docs/resources.md)
    cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = 10_000
    #: when set, the response's ``aud`` must contain one of these
    audiences: list[str] | None = Field(default=None, min_length=1)
    #: when set, the response's ``iss`` must equal this
    issuer: str | None = Field(default=None, min_length=1)
    token_type_hint: str | None = Field(default="access_token", min_length=1)
    source: CredentialSource = Field(
        default_factory=lambda: CredentialSource(authorization="Bearer")
    )
    #: connections to the endpoint at once (concurrent checks of one token share one request)
    max_concurrent_requests: Annotated[int, Field(ge=1, le=1024)] = 64
    #: RFC 8705 certificate-bound tokens (the response's cnf x5t#S256)
    certificate_binding: CertBindingSpec = Field(default_factory=CertBindingSpec)

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        _refuse_inline_secret(data, "client_secret")
        return data

    @model_validator(mode="after")
    def _check(self) -> IntrospectionSpec:
        _one_secret_source(self.client_secret_file, self.client_secret_env, "client_secret")
        if not self.endpoint.startswith(("https://", "http://")):
            raise ValueError("endpoint must be an http(s) URL")
        return self


class AuthnSpec(Model):
    """An authentication method: exactly one kind, or a reference to a named one.

    Adding a kind = one optional field here (its name is the config key and the registry key).
    """

    ref: Name | None = None
    api_key: ApiKeySpec | None = None
    jwt: JwtSpec | None = None
    mtls: MtlsSpec | None = None
    basic: BasicSpec | None = None
    hmac: HmacSpec | None = None
    introspection: IntrospectionSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _string_is_reference(cls, data: Any) -> Any:
        return {"ref": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _exactly_one(self) -> AuthnSpec:
        kinds = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(kinds) != 1:
            names = ", ".join(k for k in type(self).model_fields if k != "ref")
            raise ValueError(f"set exactly one authentication kind ({names}) or a name")
        return self

    @property
    def kind(self) -> str:
        """The configured kind (``ref`` for a reference to a named authenticator)."""
        for name in type(self).model_fields:
            if getattr(self, name) is not None:
                return name
        return "ref"


class ApiKeyEntry(Model):
    """One key of a consumer. Only its SHA-256 is stored: ``sha256:<64 hex>``."""

    id: Name
    hash: str
    scopes: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    disabled: bool = False

    @field_validator("hash")
    @classmethod
    def _check_hash(cls, v: str) -> str:
        if not _HASH.match(v):
            raise ValueError(
                "must be 'sha256:<64 lowercase hex>' (see `extauthz keys generate`); "
                "plaintext keys are never accepted"
            )
        return v

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a timezone, e.g. 2030-01-01T00:00:00Z")
        return v


class Consumer(Model):
    """A client of the protected APIs, identified by one or more API keys."""

    name: Name
    keys: list[ApiKeyEntry] = Field(default_factory=list)
    #: rate limiting: the consumer's plan (``rate_limiting.plans``) and limits of its own
    plan: Name | None = None
    limits: list[Name] = Field(default_factory=list)



class RouteMatch(Model):
    """Which requests a route applies to when Envoy did not name the route."""

    hosts: list[str] = Field(default_factory=list)
    path: str | None = None
    prefix: str | None = None
    template: str | None = None
    methods: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_path_kind(self) -> RouteMatch:
        kinds = [k for k in ("path", "prefix", "template") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError("set at most one of path, prefix, template")
        for kind in kinds:
            value = getattr(self, kind)
            if not value.startswith("/"):
                raise ValueError(f"{kind} must start with '/'")
        return self

    @field_validator("methods")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        out = [m.upper() for m in v]
        for m in out:
            if not re.match(r"^[A-Z]+$", m):
                raise ValueError(f"not an HTTP method: {m!r}")
        return out

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            h = h.lower()
            if "*" in h and not (h.startswith("*.") and "*" not in h[2:]):
                raise ValueError(f"host {h!r}: a wildcard is only allowed as a leading '*.'")
            out.append(h)
        return out


# --- authorization rules (issue 4) --------------------------------------------------------------
#
# A route's policy is a list of rules evaluated in order; every rule must pass and the first that
# fails denies (403). Each rule is a mapping with exactly one key, its kind. What each kind means,
# and the reason code it denies with, is documented in docs/policies.md; the compiled forms live in
# extauthz/authz/. Everything that can be checked without running a request (regexes, CIDRs,
# operand kinds) is checked here, so `extauthz validate` reports it with its exact path; CEL
# expressions are compiled (and reported) by extauthz.authz.policy.

#: a JSON scalar a claim, header or query value can be compared with
Scalar = StrictStr | StrictBool | StrictInt | StrictFloat

#: identity fields an ``equal`` operand may name
IdentityField = Literal["subject", "consumer", "method"]


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class ValueMatch(Model):
    """How one value (a claim, header or query parameter) is compared; exactly one is set.

    An array value is treated as the set of its elements, a scalar as a one-element set.
    """

    #: the value is a scalar equal to this (JSON equality: ``1`` is not ``"1"`` nor ``true``)
    equals: Scalar | None = None
    #: the value is a scalar equal to one of these
    one_of: list[Scalar] | None = Field(default=None, min_length=1)
    #: the value (array or scalar) contains this element
    contains: Scalar | None = None
    #: the value is a string that matches this regular expression as a whole (Python ``re``)
    regex: str | None = None
    #: the value is present (and not null)
    exists: Literal[True] | None = None
    #: the value is absent (or null)
    absent: Literal[True] | None = None

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else _check_regex(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueMatch:
        set_ = [k for k in _MATCHERS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"set exactly one of {', '.join(_MATCHERS)}")
        return self

    @property
    def matcher(self) -> str:
        return next(k for k in _MATCHERS if getattr(self, k) is not None)


_MATCHERS = ("equals", "one_of", "contains", "regex", "exists", "absent")


class ClaimRule(ValueMatch):
    """``claim: {path: realm_access.roles, contains: admin}``."""

    #: dotted claim path; a top-level claim whose name contains dots is matched first
    path: str = Field(min_length=1)


class MetadataRule(ValueMatch):
    """``metadata: {path: owner.id, equals: alice}``: a value a metadata lookup returned."""

    #: ``<lookup name>.<dotted path>`` in the lookup's JSON answer
    path: str = Field(min_length=1)


class HeaderRule(ValueMatch):
    """``header: {name: x-tenant, equals: acme}`` (values are strings)."""

    name: HeaderName

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _header_name(v)


class QueryRule(ValueMatch):
    """``query: {name: tenant, exists: true}`` (the first value of the parameter)."""

    name: str = Field(min_length=1)


class RolesRule(Model):
    """``roles: {claim: realm_access.roles, any_of: [admin]}``; exactly one of any_of/all_of."""

    #: dotted path of the claim holding the roles (an array, or one role as a string)
    claim: str = Field(min_length=1)
    any_of: list[str] | None = Field(default=None, min_length=1)
    all_of: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> RolesRule:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("set exactly one of any_of, all_of")
        return self


class AllowDeny(Model):
    """An allow list and/or a deny list. A plain list is shorthand for ``{allow: [...]}``."""

    #: when set, the value must be one of these
    allow: list[str] | None = None
    #: the value must not be one of these
    deny: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _list_is_allow(cls, data: Any) -> Any:
        return {"allow": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _something(self) -> AllowDeny:
        if self.allow is None and not self.deny:
            raise ValueError("set allow and/or deny")
        return self


class SourceRule(Model):
    """``source: {allow: [10.0.0.0/8], deny: [10.9.0.0/16]}``: CIDRs of the client address."""

    allow: list[str] | None = None
    deny: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _list_is_allow(cls, data: Any) -> Any:
        return {"allow": data} if isinstance(data, list) else data

    @field_validator("allow", "deny")
    @classmethod
    def _cidrs(cls, v: list[str] | None) -> list[str] | None:
        for i, cidr in enumerate(v or ()):
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"[{i}] {cidr!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _something(self) -> SourceRule:
        if self.allow is None and not self.deny:
            raise ValueError("set allow and/or deny")
        return self


class EqualRule(Model):
    """``equal: {param: user_id, claim: sub}``: two values from different places must be equal.

    Exactly two operand kinds: ``param`` (path-template parameter), ``claim`` (dotted path),
    ``header``, ``query``, ``identity`` (``subject``, ``consumer`` or ``method``). Both must be
    present and non-empty; two absent values are never equal.
    """

    param: str | None = None
    claim: str | None = None
    header: str | None = None
    query: str | None = None
    identity: IdentityField | None = None
    #: ``<lookup name>.<dotted path>`` in a metadata lookup's answer (docs/authzen.md)
    metadata: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else _header_name(v)

    @model_validator(mode="after")
    def _two(self) -> EqualRule:
        if len(self.operands) != 2:
            raise ValueError("name exactly two of param, claim, header, query, identity, "
                             "metadata")
        return self

    @property
    def operands(self) -> list[tuple[str, str]]:
        kinds = ("param", "claim", "header", "query", "identity", "metadata")
        return [(k, getattr(self, k)) for k in kinds if getattr(self, k) is not None]


class RuleSpec(Model):
    """One authorization rule: a mapping with exactly one key, the rule's kind."""

    scopes_all: list[str] | None = Field(default=None, min_length=1)
    scopes_any: list[str] | None = Field(default=None, min_length=1)
    roles: RolesRule | None = None
    claim: ClaimRule | None = None
    consumers: AllowDeny | None = None
    subjects: AllowDeny | None = None
    methods: list[str] | None = Field(default=None, min_length=1)
    #: the mesh peer's verified identity (gRPC ``attributes.source.principal``; Istio: SPIFFE ID)
    principal: AllowDeny | None = None
    source: SourceRule | None = None
    header: HeaderRule | None = None
    query: QueryRule | None = None
    equal: EqualRule | None = None
    any_of: list[RuleSpec] | None = Field(default=None, min_length=1)
    all_of: list[RuleSpec] | None = Field(default=None, min_length=1)
    #: a CEL expression that must evaluate to true (compiled at load)
    cel: str | None = Field(default=None, min_length=1)
    #: a value from a metadata lookup (``authz.metadata``; docs/authzen.md)
    metadata: MetadataRule | None = None
    #: ask an AuthZEN PDP (``settings.pdps``; docs/authzen.md)
    authzen: AuthzenRule | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = [m.upper() for m in v]
        for m in out:
            if not re.match(r"^[A-Z]+$", m):
                raise ValueError(f"not an HTTP method: {m!r}")
        return out

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleSpec:
        kinds = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(kinds) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"a rule has exactly one kind ({names})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class AuthzSpec(Model):
    """The route's policy: every rule must pass; the first that fails denies with 403.

    The shorthand keys are evaluated first, in this fixed order: ``scopes_all``, ``scopes_any``,
    ``consumers``, ``subjects``; then ``rules`` in list order.
    """

    scopes_all: list[str] = Field(default_factory=list)
    scopes_any: list[str] = Field(default_factory=list)
    consumers: list[Name] | None = None
    subjects: list[str] | None = None
    #: explicit rules, evaluated in order after the shorthand keys
    rules: list[RuleSpec] = Field(default_factory=list)
    #: metadata lookups (``settings.lookups``) run before the rules (docs/authzen.md)
    metadata: list[Name] = Field(default_factory=list)
    #: evaluate and report, but do not enforce: a policy denial is logged and counted as
    #: ``shadow_deny`` and the request is allowed (authentication failures still deny)
    shadow: bool = False


class RouteSpec(Model):
    """One protected (or public) route."""

    name: Name
    match: RouteMatch = Field(default_factory=RouteMatch)
    public: bool = False
    authn: list[AuthnSpec] = Field(default_factory=list)
    #: ``any_of``: the first method whose credential is present decides; ``all_of``: every
    #: method must succeed (e.g. mTLS and a JWT)
    authn_mode: Literal["any_of", "all_of"] = "any_of"
    authz: AuthzSpec = Field(default_factory=AuthzSpec)
    strip_credentials: bool | None = None
    #: rate limits (names in ``rate_limiting.limits``) every request on this route counts against
    limits: list[Name] = Field(default_factory=list)
    #: mint a signed identity token for the upstream (docs/identity-token.md)
    identity_token: RouteIdentityTokenSpec | None = None

    @model_validator(mode="after")
    def _authn_or_public(self) -> RouteSpec:
        if self.public and self.authn:
            raise ValueError("a public route takes no authn")
        if not self.public and not self.authn:
            raise ValueError("authn: required (or set public: true)")
        return self


#: gRPC's default receive limit for one message (grpcio server), which a CheckRequest must fit in
GRPC_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
#: what headers + body may take of it (the rest: peer certificate, attributes, framing)
MAX_CHECK_PAYLOAD_BYTES = GRPC_MAX_RECEIVE_BYTES - 256 * 1024


class Limits(Model):
    """Bounds on what one request may carry; each violation is a clean deny with a reason.

    Checked once per request (:mod:`extauthz.pipeline`), before routing and before any
    credential or header is parsed (reading the CheckRequest only splits the path and reads at
    most 256 query parameters): header bytes, header count and body size -> 400; then, once the
    route is known, a credential over ``max_token_bytes`` or a signature covering more than
    ``max_signature_components`` -> 401 ``credential_too_large``. Headers plus body must fit in
    one gRPC message (:data:`MAX_CHECK_PAYLOAD_BYTES`).
    """

    #: bytes of the names and values of every request header (pseudo-headers included)
    max_header_bytes: Annotated[int, Field(ge=1024, le=MAX_CHECK_PAYLOAD_BYTES)] = 64 * 1024
    #: distinct request header names (Envoy joins repeated headers with ``,``)
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 128
    #: longest credential a route's authenticators read (Authorization after its scheme,
    #: API-key header/query parameter/cookie, signature headers); client certificates excluded
    max_token_bytes: Annotated[int, Field(ge=64, le=1024 * 1024)] = 16 * 1024
    #: components one HTTP message signature may cover (RFC 9421 inner list, cavage ``headers``)
    max_signature_components: Annotated[int, Field(ge=1, le=64)] = 32
    #: longest request body Envoy may forward (``with_request_body``)
    max_body_bytes: Annotated[int, Field(ge=0, le=MAX_CHECK_PAYLOAD_BYTES)] = 1024 * 1024

    @model_validator(mode="after")
    def _fits_one_grpc_message(self) -> Limits:
        # A CheckRequest over gRPC's receive limit never reaches Check: Envoy would answer its
        # status_on_error (403), not our 400. Headers + body must leave room for the rest.
        if self.max_header_bytes + self.max_body_bytes > MAX_CHECK_PAYLOAD_BYTES:
            raise ValueError(
                f"max_header_bytes + max_body_bytes must be at most {MAX_CHECK_PAYLOAD_BYTES} "
                f"(a CheckRequest must fit in one {GRPC_MAX_RECEIVE_BYTES}-byte gRPC message)"
            )
        return self


# --- shared state across replicas (issue 7) ------------------------------------------------------
# (resolved by extauthz/state/provision.py; the client is extauthz/state/redis.py)

_REDIS_SCHEMES = ("redis", "rediss")
_KEY_PREFIX = re.compile(r"^[!-~]{0,64}$")


def check_redis_url(url: str) -> tuple[bool, bool]:
    """Validate a ``redis://`` / ``rediss://`` URL; returns (has_password, is_tls).

    ``ValueError`` messages never repeat the URL (it may carry a password).
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (expected redis://HOST[:PORT][/DB])") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError("must start with redis:// or rediss://")
    if not parts.hostname:
        raise ValueError("has no host (expected redis://HOST[:PORT][/DB])")
    if port == 0:
        raise ValueError("port must be 1-65535")
    path = parts.path.lstrip("/")
    if path and not (path.isdigit() and int(path) <= 65535):
        raise ValueError("the path must be a database number, e.g. /0")
    if parts.query or parts.fragment:
        raise ValueError("query parameters are not supported; use the settings.redis keys")
    return parts.password is not None, parts.scheme == "rediss"


class RedisSpec(Model):
    """Redis shared by every replica: HMAC nonces, Basic attempt counters, revocation lists."""

    #: ``redis://HOST[:PORT][/DB]`` or ``rediss://`` (TLS); a password here is refused
    url: str | None = None
    #: environment variable holding the whole URL (it may carry ``user:password@``)
    url_env: str | None = None
    #: the password (AUTH), when it is not in the URL of ``url_env``
    password_file: str | None = None
    password_env: str | None = None
    #: rediss only: PEM CA bundle to verify the server with (default: the system's)
    tls_ca_file: str | None = None
    #: prefix of every key extauthz writes (share one Redis between deployments safely)
    key_prefix: str = "extauthz:"
    #: bound on one Redis operation, connecting included
    timeout_seconds: Annotated[float, Field(gt=0, le=5)] = 0.1
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    #: how often the connection is probed (while Redis is down: every 50 ms)
    health_check_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    #: extauthz refuses a Redis whose maxmemory-policy is not noeviction (it could evict nonces,
    #: counters and revocations). Where CONFIG GET is disabled (managed Redis) it cannot check:
    #: set this to true once you have made sure the policy is noeviction
    assume_noeviction: bool = False
    #: keep the JWT ``jti`` / API key revocation lists in Redis (``extauthz revoke`` writes there);
    #: ``false``: only ``settings.revocation_file`` (if any) is consulted
    revocation: bool = True
    #: how often each replica syncs the revocation lists from Redis
    revocation_sync_seconds: Annotated[float, Field(gt=0, le=300)] = 1.0
    #: a replica that could not sync this long refuses the checks that need the lists (503)
    revocation_max_stale_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        _refuse_inline_secret(data, "password")
        return data

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _KEY_PREFIX.match(v):
            raise ValueError("at most 64 printable ASCII characters without spaces")
        return v

    @model_validator(mode="after")
    def _check(self) -> RedisSpec:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url, url_env")
        if self.url_env is not None and not _ENV_NAME.match(self.url_env):
            raise ValueError(f"url_env: not an environment variable name: {self.url_env!r}")
        if self.password_file is not None or self.password_env is not None:
            _one_secret_source(self.password_file, self.password_env, "password")
        if self.url is not None:
            try:
                has_password, tls = check_redis_url(self.url)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
            if has_password:
                raise ValueError(
                    "url: a password in the configuration file is refused; use url_env "
                    "(the whole URL from the environment), password_file or password_env"
                )
            if self.tls_ca_file is not None and not tls:
                raise ValueError("tls_ca_file needs a rediss:// url")
        if self.revocation_max_stale_seconds < self.revocation_sync_seconds:
            raise ValueError("revocation_max_stale_seconds must be >= revocation_sync_seconds")
        return self


class OutboundSpec(Model):
    """The policy of every outbound HTTP call (JWKS, discovery, introspection): docs/outbound.md."""

    #: follow redirects of GETs (JWKS, discovery); never https -> http, never for introspection
    follow_redirects: bool = False
    max_redirects: Annotated[int, Field(ge=1, le=10)] = 3
    #: accept plain http to hosts other than loopback (refused by default)
    allow_plain_http: bool = False
    #: use HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc) from the environment
    trust_env: bool = False
    #: PEM CA bundle that replaces the system trust store (relative to the config file)
    ca_file: str | None = Field(default=None, min_length=1)


class PathSettings(Model):
    """Paths that are refused by default (400 ``bad_request``) because an upstream may resolve
    them to another resource, and may be allowed for upstreams that need them
    (:mod:`extauthz.paths` has the whole rule; docs/paths.md the reasoning)."""

    #: accept ``;`` / ``%3B`` (path parameters): only for upstreams that treat ``;`` as an
    #: ordinary character, or whose routes hold for the path with its parameters removed
    allow_semicolon: bool = False
    #: accept ``%25`` (a literal ``%`` in a name); a double-encoded separator stays refused
    allow_encoded_percent: bool = False


# --- rate limiting (compiled by extauthz/ratelimit/compile.py; documented in docs/ratelimit.md) ---

#: what a rate-limit key can be made of (besides a CEL expression)
RateLimitKeyPart = Literal["consumer", "subject", "api_key", "client_address", "route", "method",
                           "plan"]


class RateLimitCelKey(Model):
    """A key part computed by a CEL expression over request, identity, route and params."""

    cel: str = Field(min_length=1, max_length=4096)


class RateLimitWindow(Model):
    """``requests`` per ``seconds``, with bursts of at most ``burst`` (default: ``requests``)."""

    requests: Annotated[int, Field(ge=1, le=1_000_000_000)]
    #: whole seconds (the RateLimit-Policy ``w`` parameter is an integer)
    seconds: Annotated[int, Field(ge=1, le=366 * 86400)]
    burst: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    #: the policy name in the RateLimit-Policy / RateLimit headers (default: ``<limit>-<seconds>s``)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] | None = None


class RateLimitSpec(Model):
    """One named limit: a key (who is counted) and one or more windows (how much)."""

    key: list[RateLimitKeyPart | RateLimitCelKey] = Field(min_length=1, max_length=8)
    windows: list[RateLimitWindow] = Field(min_length=1, max_length=8)
    #: ``memory``: this replica counts alone; ``redis``: every replica shares the count
    store: Literal["memory", "redis"] = "memory"
    #: Redis unreachable: ``fail_closed`` (503) or ``fail_open`` (the local ``fallback`` limit)
    on_redis_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    #: the per-replica windows used while Redis is unreachable (fail_open; default: ``windows``)
    fallback: list[RateLimitWindow] | None = Field(default=None, min_length=1, max_length=8)
    #: add RateLimit-Policy / RateLimit to allowed responses too (429s always carry them)
    headers_on_allow: bool = True
    #: in-memory store (and fallback): most keys tracked; the least recently used is forgotten
    max_keys: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000

    @field_validator("key", mode="before")
    @classmethod
    def _one_part(cls, v: Any) -> Any:
        return [v] if isinstance(v, str | dict) else v

    @model_validator(mode="after")
    def _check(self) -> RateLimitSpec:
        if self.fallback is not None and self.on_redis_error != "fail_open":
            raise ValueError("fallback: only used with on_redis_error: fail_open")
        if self.fallback is not None and self.store != "redis":
            raise ValueError("fallback: only used with store: redis")
        return self


class RateLimitRedisSpec(Model):
    """The Redis (or Redis Cluster) that ``store: redis`` limits share."""

    url: str | None = None
    url_env: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    tls_ca_file: str | None = None
    #: a Redis Cluster: ``url`` is any node (the others are discovered)
    cluster: bool = False
    key_prefix: str = "extauthz:rl:"
    #: bound on one check's Redis call, connecting included
    timeout_seconds: Annotated[float, Field(gt=0, le=5)] = 0.05
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    #: after a failure, calls fail at once for this long (then one call tries again)
    retry_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0

    def connection(self) -> RedisSpec:
        """The connection settings as a :class:`RedisSpec` (same validation, same resolver)."""
        return RedisSpec(
            url=self.url, url_env=self.url_env, password_file=self.password_file,
            password_env=self.password_env, tls_ca_file=self.tls_ca_file,
            key_prefix=self.key_prefix, timeout_seconds=self.timeout_seconds,
            max_connections=self.max_connections, revocation=False,
        )

    @model_validator(mode="after")
    def _check(self) -> RateLimitRedisSpec:
        if "{" in self.key_prefix or "}" in self.key_prefix:
            # the keys' hash tag ({limit:key}) must be the first braces in the key
            raise ValueError("key_prefix: must not contain '{' or '}'")
        self.connection()  # raises ValueError with the same messages as settings.redis
        return self


class RateLimiting(Model):
    """Named limits, plans (named lists of limits), the shared store, Envoy descriptors."""

    limits: dict[Name, RateLimitSpec] = Field(default_factory=dict)
    plans: dict[Name, list[Name]] = Field(default_factory=dict)
    redis: RateLimitRedisSpec | None = None
    #: dynamic metadata for Envoy's own rate limit filter (names of identity facts)
    descriptors: list[Literal["consumer", "subject", "api_key", "plan", "route", "method"]] = (
        Field(default_factory=list))


class Settings(Model):
    """Process-wide behaviour."""

    #: what happens to a request that matches no route: ``deny`` (403 no_route) or ``allow``
    unmatched: Literal["deny", "allow"] = "deny"
    #: reserved namespace for identity headers; client-sent headers in it are always removed
    identity_header_prefix: HeaderName = "x-auth-"
    #: remove credentials (Authorization, API key header/param/cookie) before the upstream sees them
    strip_credentials: bool = True
    #: realm used in WWW-Authenticate challenges
    realm: str = "extauthz"
    #: context_extensions key that names the route (set per route in Envoy)
    route_key: str = "route"
    #: shared state across replicas (nonces, attempt counters, revocation); none = in memory
    redis: RedisSpec | None = None
    #: revoked JWT ``jti`` values and API keys, one per line (relative to the config file)
    revocation_file: str | None = Field(default=None, min_length=1)
    #: request size limits (see :class:`Limits`)
    limits: Limits = Field(default_factory=Limits)
    #: outbound HTTP calls (JWKS, discovery, introspection): redirects, https, proxies, CA
    outbound: OutboundSpec = Field(default_factory=OutboundSpec)
    #: AuthZEN policy decision points and metadata lookups, by name (docs/authzen.md)
    pdps: dict[Name, PdpSpec] = Field(default_factory=dict)
    lookups: dict[Name, LookupSpec] = Field(default_factory=dict)
    #: ambiguous paths an upstream needs (see :class:`PathSettings`)
    paths: PathSettings = Field(default_factory=PathSettings)
    #: signed identity token for the upstream (docs/identity-token.md); none = off
    identity_token: IdentityTokenSpec | None = None

    @field_validator("identity_header_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.lower()
        if not re.match(r"^[a-z0-9-]+-$", v):
            raise ValueError("must be a header-name prefix ending in '-', e.g. 'x-auth-'")
        return v


class FragmentFile(Model):
    """An included file: it may add authenticators, consumers and routes."""

    authenticators: dict[Name, AuthnSpec] = Field(default_factory=dict)
    consumers: list[Consumer] = Field(default_factory=list)
    routes: list[RouteSpec] = Field(default_factory=list)


class ConfigFile(FragmentFile):
    """The main configuration file."""

    version: Literal[1] = 1
    settings: Settings = Field(default_factory=Settings)
    #: rate limits and quotas (docs/ratelimit.md)
    rate_limiting: RateLimiting = Field(default_factory=RateLimiting)
    #: files or directories (``*.yaml``/``*.yml``, sorted) relative to this file
    include: list[str] = Field(default_factory=list)
