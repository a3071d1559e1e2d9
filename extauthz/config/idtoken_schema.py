"""Configuration models of the signed identity token (``settings.identity_token`` and the
per-route ``identity_token``); documented in ``docs/identity-token.md``.

Kept out of :mod:`extauthz.config.schema` so the feature's keys live in one place; that module
imports these models for its two fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

#: the upper bound on a token's lifetime: a stolen token must not outlive a few minutes
MAX_TTL_SECONDS = 300.0

#: claims extauthz itself sets; ``claims`` may not copy a credential's claim over one of them
RESERVED_CLAIMS = frozenset(
    {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "consumer", "methods", "scope"}
)

ClaimName = Annotated[str, Field(min_length=1, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _claims(value: list[str]) -> list[str]:
    reserved = sorted(set(value) & RESERVED_CLAIMS)
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by extauthz itself, cannot be copied")
    if len(set(value)) != len(value):
        raise ValueError("a claim is listed twice")
    return value


class SigningKeySpec(_Model):
    """One private key (PEM, PKCS#8 or SEC1): an EC P-256 key signs ES256, an Ed25519 key EdDSA.

    From a file (a mounted Kubernetes Secret) or an environment variable; never inline.
    """

    file: str | None = Field(default=None, min_length=1)
    env: str | None = None
    #: the JWK ``kid``; default: the key's RFC 7638 thumbprint (stable across restarts)
    kid: str | None = Field(default=None, pattern=_KID.pattern)

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("pem" in data or "key" in data):
            raise ValueError("inline keys are refused; use file or env")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SigningKeySpec:
        if (self.file is None) == (self.env is None):
            raise ValueError("set exactly one of file, env")
        if self.env is not None and not _ENV_NAME.match(self.env):
            raise ValueError(f"env: not an environment variable name: {self.env!r}")
        return self


class IdentityTokenSpec(_Model):
    """``settings.identity_token``: how extauthz signs the identity token it gives the upstream."""

    #: the ``iss`` claim (and the discovery document's ``issuer``)
    issuer: str = Field(min_length=1, max_length=512)
    #: request header the token is set in (overwriting a client-sent one, which is also removed
    #: from every request, minted or not)
    header: str = "x-auth-identity-token"
    #: lifetime (``exp - iat``), at most five minutes; never beyond the credential's own expiry
    ttl_seconds: float = Field(default=60.0, ge=5.0, le=MAX_TTL_SECONDS)
    #: signing keys: the FIRST signs, every one is published in the JWKS (rotation: put the new
    #: key first, keep the old one second until tokens it signed have expired, then drop it)
    keys: list[SigningKeySpec] = Field(min_length=1, max_length=3)
    #: claims of the credential (JWT / introspection) copied into the token by default
    claims: list[ClaimName] = Field(default_factory=list)
    #: mint on every authenticated route (a route can still opt out with ``identity_token: false``)
    all_routes: bool = False
    #: ``jwks_uri`` in the discovery document; default: derived from the admin request's host
    jwks_uri: str | None = Field(default=None, min_length=1)
    #: minted tokens kept for reuse (per identity + audience); 0 disables the cache
    cache_max_entries: int = Field(default=10_000, ge=0, le=1_000_000)

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        v = v.lower()
        if not _HEADER_NAME.match(v) or len(v) > 128:
            raise ValueError(f"not a valid HTTP header name: {v!r}")
        if v in {"authorization", "cookie", "host", "content-length", "transfer-encoding"}:
            raise ValueError(f"{v}: a protocol header cannot carry the identity token")
        return v

    @field_validator("claims")
    @classmethod
    def _claim_names(cls, v: list[str]) -> list[str]:
        return _claims(v)

    @model_validator(mode="after")
    def _distinct_kids(self) -> IdentityTokenSpec:
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(set(kids)) != len(kids):
            raise ValueError("keys: two keys share a kid")
        return self


class RouteIdentityTokenSpec(_Model):
    """A route's ``identity_token``: ``true``/``false`` or these overrides (implies ``true``)."""

    enabled: bool = True
    #: the ``aud`` claim; default: the route's name
    audience: str | None = Field(default=None, min_length=1, max_length=512)
    #: claims copied for this route (replaces ``settings.identity_token.claims``)
    claims: list[ClaimName] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return {"enabled": data}
        return data

    @field_validator("claims")
    @classmethod
    def _claim_names(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _claims(v)
