"""The files: the main configuration file (:class:`ConfigFile`) and an included fragment
(:class:`FragmentFile`). :mod:`extauthz.config.loader` reads, merges and validates them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from extauthz.config.schema.authn import AuthnSpec
from extauthz.config.schema.base import Model, Name
from extauthz.config.schema.consumers import Consumer
from extauthz.config.schema.ratelimit import RateLimiting
from extauthz.config.schema.routes import RouteSpec
from extauthz.config.schema.settings import Settings


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
