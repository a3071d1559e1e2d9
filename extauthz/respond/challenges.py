"""The ``WWW-Authenticate`` challenges of a 401: which authenticators speak, and how.

Each authenticator renders its own challenge (``Authenticator.challenge``); this module decides
which of them a denial carries. The 403 challenge (RFC 6750 ``insufficient_scope``) is built by
the pipeline (``_forbidden_challenges``).
"""

from __future__ import annotations

from collections.abc import Iterable

from extauthz.authn.base import Authenticator
from extauthz.errors import AuthenticationError
from extauthz.routing import Route

__all__ = ["invalid_challenges", "missing_challenges"]


def missing_challenges(missing: Iterable[Authenticator]) -> list[str]:
    """No credential: one plain challenge per method lacking one, each distinct text once
    (identical challenges, e.g. JWT + introspection, are sent once)."""
    return list(dict.fromkeys(a.challenge() for a in missing))


def invalid_challenges(route: Route | None, error: AuthenticationError) -> list[str]:
    """An invalid credential: the failing method's challenge with the error, the others plain
    (every method of the route is still an option for the client)."""
    if route is None:
        return []
    out = []
    for authenticator in route.authenticators:
        if authenticator.name == error.authenticator:
            out.append(authenticator.challenge(error))
        else:
            out.append(authenticator.challenge())
    return out
