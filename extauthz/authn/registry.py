"""Builds authenticators from configuration: a mapping from kind to factory.

The registry is made by :func:`default_registry` (not a mutable global) so tests and embedders can
extend or replace a kind without touching process state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extauthz.authn.base import Authenticator
from extauthz.clock import Clock, system_clock
from extauthz.config.schema import Consumer, Settings
from extauthz.metrics import Metrics
from extauthz.outbound import OutboundPolicy

if TYPE_CHECKING:
    from extauthz.authn.shared_state import StateProvider


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a factory may use besides its own spec."""

    settings: Settings
    metrics: Metrics
    #: directory of the main configuration file; relative paths in specs resolve against it
    base_dir: Path
    consumers: tuple[Consumer, ...] = ()
    clock: Clock = system_clock
    #: shared stores (Redis) and revocation lists; ``None``: in-memory defaults, nothing revoked
    state: StateProvider | None = None
    #: the policy of every outbound HTTP call (``settings.outbound``)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)


#: factory(name, spec, ctx) -> Authenticator; raises ValueError with a message for bad input that
#: the schema could not catch (e.g. an unreadable JWKS file).
Factory = Callable[[str, Any, BuildContext], Authenticator]


def default_registry() -> Mapping[str, Factory]:
    """The built-in authentication kinds, keyed by their configuration key."""
    from extauthz.authn.apikey import ApiKeyAuthenticator
    from extauthz.authn.basic import BasicAuthenticator
    from extauthz.authn.hmac_sig import HmacAuthenticator
    from extauthz.authn.introspection import IntrospectionAuthenticator
    from extauthz.authn.jwt import JwtAuthenticator
    from extauthz.authn.mtls import MtlsAuthenticator

    return {
        "api_key": ApiKeyAuthenticator.from_spec,
        "jwt": JwtAuthenticator.from_spec,
        "hmac": HmacAuthenticator.from_spec,
        "introspection": IntrospectionAuthenticator.from_spec,
        "mtls": MtlsAuthenticator.from_spec,
        "basic": BasicAuthenticator.from_spec,
    }
