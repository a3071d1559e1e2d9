"""Routes (``routes``): what a route matches when Envoy does not name it, and what it requires
(authentication, authorization, limits, an identity token).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from extauthz.config.idtoken_schema import RouteIdentityTokenSpec
from extauthz.config.schema.authn import AuthnSpec
from extauthz.config.schema.base import Model, Name
from extauthz.config.schema.rules import AuthzSpec


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
