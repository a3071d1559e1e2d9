"""Bearer dispatch: which of a route's bearer-token methods should see this token.

Two situations where "try the methods in order" would be wrong for bearer tokens, because a
bearer method that sees a token it cannot verify must refuse it (an invalid credential never
falls through):

* a route accepting JWTs **and** opaque tokens (introspection): a token that is not shaped like a
  JWT goes to introspection only; a JWT-shaped one to the JWT verifier(s) only;
* a route accepting JWTs from **several issuers**: the unverified ``iss`` picks the verifier of
  that issuer (as Envoy's jwt_authn does). Nothing is trusted from the unverified payload: it
  only selects which verifier then checks everything, signature and ``iss`` included. When no
  verifier's issuer matches, all stay in play and the first refuses the token (``wrong_issuer``).

Only the ``Authorization: Bearer`` form is dispatched; methods reading other sources are left
alone. The routes that need dispatch are found at compile time (:func:`needs_dispatch`), so other
routes pay nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

from extauthz.authn.base import Authenticator
from extauthz.authn.introspection import looks_like_jwt
from extauthz.types import AuthMethod, RequestView

_BEARER_KINDS = (AuthMethod.JWT, AuthMethod.INTROSPECTION)


def needs_dispatch(authenticators: Sequence[Authenticator]) -> bool:
    """True when a route has more than one bearer method (JWT issuers and/or introspection)."""
    return sum(1 for a in authenticators if a.kind in _BEARER_KINDS) > 1


def _bearer(view: RequestView) -> str | None:
    raw = view.headers.value("authorization")
    if raw is None:
        return None
    scheme, _, rest = raw.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else None


def _unverified_issuer(token: str) -> str | None:
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def select(authenticators: Sequence[Authenticator], view: RequestView) -> Sequence[Authenticator]:
    """The route's authenticators minus the bearer methods that must not see this token."""
    token = _bearer(view)
    if not token:
        return authenticators
    if not looks_like_jwt(token):
        return [a for a in authenticators if a.kind is not AuthMethod.JWT]
    kept = [a for a in authenticators if a.kind is not AuthMethod.INTROSPECTION]
    jwts = [a for a in kept if a.kind is AuthMethod.JWT]
    if len(jwts) > 1:
        issuer = _unverified_issuer(token)
        matching = [a for a in jwts if a.surface.issuer == issuer]
        if matching:
            kept = [a for a in kept if a.kind is not AuthMethod.JWT or a in matching]
    return kept
