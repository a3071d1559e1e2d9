"""Where a JWT authenticator gets its keys: the :class:`JwksSource` contract and static keys.

* :class:`StaticJwks` — ``file`` / ``inline``; loaded at build time, never stale.
* :class:`~extauthz.authn.jwks.remote.RemoteJwks` — ``url`` / ``discovery``, refreshed in the
  background (:mod:`.remote`).
"""

from __future__ import annotations

from typing import Protocol

from extauthz.authn.jwks.keys import KeySet
from extauthz.metrics import Metrics

__all__ = ["JwksSource", "StaticJwks"]


class JwksSource(Protocol):
    """Where a :class:`~extauthz.authn.jwt.JwtAuthenticator` gets its keys."""

    @property
    def keyset(self) -> KeySet | None:
        """The current keys, or ``None`` before the first successful load."""
        ...

    def keys_at(self, now: float) -> KeySet:
        """The keys usable at ``now``; raises ``DependencyUnavailable`` when there are none or they
        are too stale."""
        ...

    async def refetch(self) -> bool:
        """Try to get newer keys after an unknown ``kid`` (rate-limited, de-duplicated)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class StaticJwks:
    """Keys from the configuration (``file`` or ``inline``): loaded once, never stale."""

    def __init__(self, keyset: KeySet, *, issuer: str, metrics: Metrics) -> None:
        self._keyset = keyset
        metrics.jwks_keys.labels(issuer=issuer).set(len(keyset.keys))

    @property
    def keyset(self) -> KeySet:
        return self._keyset

    def keys_at(self, now: float) -> KeySet:
        return self._keyset

    async def refetch(self) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
