"""Process-wide behaviour (``settings``): the unmatched-request policy, the identity header
namespace, request limits, outbound calls, ambiguous paths, and the keys of the features that
have their own modules (Redis, PDPs and lookups, the identity token).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from extauthz.config.external import LookupSpec, PdpSpec
from extauthz.config.idtoken_schema import IdentityTokenSpec
from extauthz.config.schema.base import HeaderName, Model, Name
from extauthz.config.schema.redis import RedisSpec

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
