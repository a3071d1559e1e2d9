"""The signed identity token: a short-lived JWT extauthz mints for the upstream after an allow.

:mod:`.keys` loads and generates the signing keys and renders the public JWKS; :mod:`.minter`
builds, signs and caches the tokens. The pipeline calls :meth:`IdentityTokens.header_for`; the
admin endpoint serves :meth:`IdentityTokens.jwks` (``docs/identity-token.md``).
"""

from extauthz.idtoken.minter import IdentityTokens, build_identity_tokens

__all__ = ["IdentityTokens", "build_identity_tokens"]
