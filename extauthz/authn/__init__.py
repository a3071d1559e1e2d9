"""Authentication methods: each turns a request's credential into an Identity (or refuses it).

The contract every method implements is :mod:`extauthz.authn.base` (docs/authenticators.md).
"""

from extauthz.authn.base import Authenticator, AuthenticatorBase, Challenge, CredentialSurface

__all__ = ["Authenticator", "AuthenticatorBase", "Challenge", "CredentialSurface"]
