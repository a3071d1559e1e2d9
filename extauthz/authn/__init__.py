"""Authentication methods: each turns a request's credential into an Identity (or refuses it)."""

from extauthz.authn.base import Authenticator, Challenge

__all__ = ["Authenticator", "Challenge"]
