"""The authentication methods (``authenticators`` and a route's ``authn``): one model per kind
and :class:`AuthnSpec`, the choice of exactly one. mTLS and HMAC have their own modules
(:mod:`~extauthz.config.schema.certs`, :mod:`~extauthz.config.schema.hmac`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from extauthz.config.schema.base import (
    HeaderName,
    Model,
    Name,
    PositiveSeconds,
    header_name,
    one_secret_source,
    refuse_inline_secret,
)
from extauthz.config.schema.certs import CertBindingSpec, MtlsSpec
from extauthz.config.schema.hmac import HmacSpec

#: Algorithms a JWT issuer may pin. ``none`` and the HMAC family are absent on purpose: extauthz
#: verifies third-party tokens with public keys only, so "HMAC with a public key" cannot happen.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


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
        return None if v is None else header_name(v)

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
        return {claim: header_name(h) for claim, h in v.items()}

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str) -> str:
        if v != v.strip():
            raise ValueError("issuer must not have surrounding whitespace")
        return v


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
        refuse_inline_secret(data, "client_secret")
        return data

    @model_validator(mode="after")
    def _check(self) -> IntrospectionSpec:
        one_secret_source(self.client_secret_file, self.client_secret_env, "client_secret")
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
