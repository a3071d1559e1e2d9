"""Shared state across replicas (``settings.redis``): the Redis connection and the revocation
lists' sync. Resolved by extauthz/state/provision.py; docs/state.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from extauthz.config.schema.base import (
    ENV_NAME,
    Model,
    one_secret_source,
    refuse_inline_secret,
)

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
        refuse_inline_secret(data, "password")
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
        if self.url_env is not None and not ENV_NAME.match(self.url_env):
            raise ValueError(f"url_env: not an environment variable name: {self.url_env!r}")
        if self.password_file is not None or self.password_env is not None:
            one_secret_source(self.password_file, self.password_env, "password")
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
