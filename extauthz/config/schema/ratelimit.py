"""Rate limits and quotas (``rate_limiting``): named limits, plans, the shared store and Envoy
descriptors. Compiled by extauthz/ratelimit/compile.py; docs/ratelimit.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from extauthz.config.schema.base import Model, Name
from extauthz.config.schema.redis import RedisSpec

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
