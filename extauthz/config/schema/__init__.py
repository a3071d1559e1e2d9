"""The configuration file format, as pydantic models (validation only; nothing here runs).

Pydantic reports every problem at once with its location; :mod:`extauthz.config.loader` renders
those locations as ``routes[2].authn[0].jwt.issuer``. Models forbid unknown keys so a typo is an
error, not a silently ignored setting. Every key is documented in ``docs/configuration.md``.

One module per area; this package hands on their public names, so ``from
extauthz.config.schema import Settings`` is the import to use:

``base``       :class:`Model` (strict), names, header names, where secrets come from
``authn``      the authentication methods (:class:`AuthnSpec`: JWT, API key, Basic, introspection)
``certs``      client certificates: ``mtls``, the XFCC trust model, certificate-bound tokens
``hmac``       HTTP message signatures with shared keys
``consumers``  consumers and their API keys
``rules``      a route's ``authz`` and its rules
``routes``     routes: matching and what they require
``redis``      shared state across replicas (``settings.redis``)
``ratelimit``  rate limits and quotas (``rate_limiting``)
``settings``   process-wide ``settings`` (limits, outbound calls, paths)
``files``      the main file and included fragments

PDPs and lookups (:mod:`extauthz.config.external`) and the identity token
(:mod:`extauthz.config.idtoken_schema`) have their own modules beside this package.
"""

from extauthz.config.schema.authn import (
    ApiKeySpec,
    AuthnSpec,
    BasicSpec,
    CredentialSource,
    IntrospectionSpec,
    JwksSpec,
    JwtAlgorithm,
    JwtSpec,
)
from extauthz.config.schema.base import (
    HeaderName,
    Model,
    Name,
    PositiveSeconds,
)
from extauthz.config.schema.certs import (
    CertBindingSpec,
    MtlsSpec,
    SpiffeBundleSpec,
    XfccMode,
    XfccModelArgs,
    XfccSpec,
    model_problem,
)
from extauthz.config.schema.consumers import ApiKeyEntry, Consumer
from extauthz.config.schema.files import ConfigFile, FragmentFile
from extauthz.config.schema.hmac import (
    DigestAlgorithm,
    HmacKeySpec,
    HmacSpec,
    SecretEncoding,
)
from extauthz.config.schema.ratelimit import (
    RateLimitCelKey,
    RateLimiting,
    RateLimitKeyPart,
    RateLimitRedisSpec,
    RateLimitSpec,
    RateLimitWindow,
)
from extauthz.config.schema.redis import RedisSpec, check_redis_url
from extauthz.config.schema.routes import RouteMatch, RouteSpec
from extauthz.config.schema.rules import (
    AllowDeny,
    AuthzSpec,
    ClaimRule,
    EqualRule,
    HeaderRule,
    IdentityField,
    MetadataRule,
    QueryRule,
    RolesRule,
    RuleSpec,
    Scalar,
    SourceRule,
    ValueMatch,
)
from extauthz.config.schema.settings import (
    GRPC_MAX_RECEIVE_BYTES,
    MAX_CHECK_PAYLOAD_BYTES,
    Limits,
    OutboundSpec,
    PathSettings,
    Settings,
)

__all__ = [
    "GRPC_MAX_RECEIVE_BYTES",
    "MAX_CHECK_PAYLOAD_BYTES",
    "AllowDeny",
    "ApiKeyEntry",
    "ApiKeySpec",
    "AuthnSpec",
    "AuthzSpec",
    "BasicSpec",
    "CertBindingSpec",
    "ClaimRule",
    "ConfigFile",
    "Consumer",
    "CredentialSource",
    "DigestAlgorithm",
    "EqualRule",
    "FragmentFile",
    "HeaderName",
    "HeaderRule",
    "HmacKeySpec",
    "HmacSpec",
    "IdentityField",
    "IntrospectionSpec",
    "JwksSpec",
    "JwtAlgorithm",
    "JwtSpec",
    "Limits",
    "MetadataRule",
    "Model",
    "MtlsSpec",
    "Name",
    "OutboundSpec",
    "PathSettings",
    "PositiveSeconds",
    "QueryRule",
    "RateLimitCelKey",
    "RateLimitKeyPart",
    "RateLimitRedisSpec",
    "RateLimitSpec",
    "RateLimitWindow",
    "RateLimiting",
    "RedisSpec",
    "RolesRule",
    "RouteMatch",
    "RouteSpec",
    "RuleSpec",
    "Scalar",
    "SecretEncoding",
    "Settings",
    "SourceRule",
    "SpiffeBundleSpec",
    "ValueMatch",
    "XfccMode",
    "XfccModelArgs",
    "XfccSpec",
    "check_redis_url",
    "model_problem",
]
