"""HTTP message signatures with shared keys (``hmac``): RFC 9421 or draft-cavage, the keys and
what a signature must cover. Compiled by extauthz/authn/hmac_sig.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from extauthz.config.schema.base import (
    Model,
    Name,
    header_name,
    one_secret_source,
    refuse_inline_secret,
)

SecretEncoding = Literal["raw", "base64", "base64url", "hex"]
DigestAlgorithm = Literal["sha-256", "sha-512"]
#: RFC 9421 keyid / draft-cavage keyId: printable ASCII without space, '"', ',' and '\'
_KEY_ID = re.compile(r"^[!#-+\--\[\]-~]{1,256}$")
_SF_KEY = re.compile(r"^[a-z*][a-z0-9_\-.*]{0,63}$")
#: derived components (RFC 9421 §2.2) a route may require; cavage cannot express @scheme
_DERIVED_COMPONENTS = frozenset(
    {"@method", "@authority", "@scheme", "@target-uri", "@request-target", "@path", "@query"}
)


def _all_digest_algorithms() -> list[DigestAlgorithm]:
    return ["sha-256", "sha-512"]


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
        refuse_inline_secret(data, "secret")
        return data

    @model_validator(mode="after")
    def _secret_source(self) -> HmacKeySpec:
        one_secret_source(self.secret_file, self.secret_env, "secret")
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
                name = header_name(name)
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
