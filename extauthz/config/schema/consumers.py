"""Consumers (``consumers``): the clients of the protected APIs and their API keys (only the
keys' SHA-256 is stored).
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import Field, field_validator

from extauthz.config.schema.base import Model, Name

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


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
