"""What authenticators see of the shared state: the provider handed to them in ``BuildContext``.

The port is declared here, on the authenticators' side, and implemented by
:mod:`extauthz.state` (which sits above authn: it builds Redis and file stores for these
protocols), so authn never imports the state package. Kept free of Redis imports, so the
in-memory path never loads redis-py.
"""

from __future__ import annotations

from typing import Protocol

from extauthz.authn.attempts import AttemptLimiter
from extauthz.authn.nonces import NonceStore
from extauthz.errors import DependencyUnavailable, Reason

__all__ = ["Revocations", "SharedStateUnavailable", "StateProvider"]


class SharedStateUnavailable(DependencyUnavailable):
    """Redis cannot answer (down, timed out, refused the command), or the revocation lists are
    older than allowed. Always a fail-closed 503 ``shared_state_unavailable``."""

    def __init__(self, description: str = "shared state unavailable", detail: str = "") -> None:
        super().__init__(Reason.SHARED_STATE_UNAVAILABLE, description, detail)


class Revocations(Protocol):
    """Revoked JWT ids and API keys. Synchronous on purpose: a check is a dict lookup.

    Both methods may raise :class:`SharedStateUnavailable` when the list comes from Redis and
    could not be refreshed for longer than ``revocation_max_stale_seconds``.
    """

    def jti_revoked(self, jti: str) -> bool:
        """Whether the token with this ``jti`` claim is revoked (now)."""
        ...

    def key_revoked(self, consumer: str, key_id: str) -> bool:
        """Whether the API key ``consumer/key_id`` is revoked (now)."""
        ...


class StateProvider(Protocol):
    """Shared stores for the authenticators of one configuration (``BuildContext.state``).

    A method returning ``None`` means "use your in-memory default".
    """

    @property
    def revocations(self) -> Revocations | None:
        """The revocation lists, or ``None`` when none is configured (nothing to check)."""
        ...

    def nonce_store(self, owner: str) -> NonceStore | None:
        """The replay cache for the authenticator named ``owner`` (stores scope nonces by
        signing key, so the name is only for logs and metrics)."""
        ...

    def attempt_limiter(
        self, owner: str, *, max_failures: int, window_seconds: float, max_keys: int
    ) -> AttemptLimiter | None:
        """The brute-force limiter for the authenticator named ``owner``."""
        ...
