"""The ``WWW-Authenticate`` challenges of a 401: which authenticators speak, and how.

Each authenticator renders its own challenge (``Authenticator.challenge``); this module decides
which of them a denial carries: a 401's (:func:`missing_challenges`, :func:`invalid_challenges`)
and a 403's (:func:`forbidden_challenges`, e.g. RFC 6750 ``insufficient_scope``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from extauthz.authn.base import Authenticator
from extauthz.errors import AuthenticationError, AuthorizationError
from extauthz.routing import Route
from extauthz.types import Identity

if TYPE_CHECKING:
    from extauthz.snapshot import Snapshot

__all__ = ["forbidden_challenges", "invalid_challenges", "missing_challenges"]


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


def forbidden_challenges(
    snapshot: Snapshot, identity: Identity, error: AuthorizationError
) -> list[str]:
    """The 403 challenge of the method that verified ``identity`` (e.g. RFC 6750 §3.1
    ``insufficient_scope`` for bearer tokens), if it has one."""
    authenticator = snapshot.authenticators.get(identity.authenticator)
    if authenticator is None:
        return []
    challenge = authenticator.forbidden_challenge(error)
    return [] if challenge is None else [challenge]
