"""Builds authenticators from configuration: a mapping from kind to factory.

The registry is made by :func:`default_registry` (not a mutable global) so tests and embedders can
extend or replace a kind without touching process state. The authenticators take a
:class:`~extauthz.authn.context.BuildContext` (its own module), so this module imports them and
none of them imports it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from extauthz.authn.apikey import ApiKeyAuthenticator
from extauthz.authn.base import Authenticator
from extauthz.authn.basic import BasicAuthenticator
from extauthz.authn.context import BuildContext
from extauthz.authn.hmac_sig import HmacAuthenticator
from extauthz.authn.introspection import IntrospectionAuthenticator
from extauthz.authn.jwt import JwtAuthenticator
from extauthz.authn.mtls import MtlsAuthenticator

__all__ = ["BUILT_IN", "BuildContext", "Factory", "default_registry"]

#: factory(name, spec, ctx) -> Authenticator; raises ValueError with a message for bad input that
#: the schema could not catch (e.g. an unreadable JWKS file).
Factory = Callable[[str, Any, BuildContext], Authenticator]

#: the built-in kinds by configuration key. Typed ``type[Authenticator]``: mypy checks every
#: class against the whole contract (extauthz.authn.base) — the static conformance check.
BUILT_IN: Mapping[str, type[Authenticator]] = {
    "api_key": ApiKeyAuthenticator,
    "jwt": JwtAuthenticator,
    "hmac": HmacAuthenticator,
    "introspection": IntrospectionAuthenticator,
    "mtls": MtlsAuthenticator,
    "basic": BasicAuthenticator,
}


def default_registry() -> Mapping[str, Factory]:
    """The built-in authentication kinds, keyed by their configuration key."""
    return {
        "api_key": ApiKeyAuthenticator.from_spec,
        "jwt": JwtAuthenticator.from_spec,
        "hmac": HmacAuthenticator.from_spec,
        "introspection": IntrospectionAuthenticator.from_spec,
        "mtls": MtlsAuthenticator.from_spec,
        "basic": BasicAuthenticator.from_spec,
    }
